// C++ CPU kernels of the atmospheric scattering model ops (SPEC section 1).
// Layout: every tensor is taken contiguous NCHW; work is split into (image, block of pixels)
// tasks, each looping over the channels, so that a broadcast t [B,1,H,W] is read once per
// pixel and 1/max(t, t0) is computed once per pixel and reused by all channels.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fastdehaze/asm_math.h"
#include "fastdehaze/cpu_utils.h"

namespace fastdehaze {
namespace {

namespace am = asm_math;

struct Dims {
  int64_t B, C, HW, Ct;
};

Dims image_dims(const at::Tensor& I, const at::Tensor& t, const at::Tensor& A, const at::Tensor& t0) {
  TORCH_CHECK(I.dim() == 4, "fastdehaze::recover: I must be [B,C,H,W]");
  TORCH_CHECK(t.dim() == 4 && t.size(0) == I.size(0) && t.size(2) == I.size(2) && t.size(3) == I.size(3) &&
                  (t.size(1) == 1 || t.size(1) == I.size(1)),
              "fastdehaze::recover: t must be [B,1,H,W] or [B,C,H,W] matching I");
  TORCH_CHECK(t.scalar_type() == I.scalar_type(), "fastdehaze::recover: t must have I's dtype");
  const int64_t B = I.size(0), C = I.size(1);
  TORCH_CHECK(A.numel() == B * C && t0.numel() == B * C, "fastdehaze::recover: A and t0 must be [B,C]");
  return {B, C, I.size(2) * I.size(3), t.size(1)};
}

at::Tensor recover_cpu(const at::Tensor& I, const at::Tensor& t, const at::Tensor& A, const at::Tensor& t0,
                       double lo, double hi, bool clamp) {
  const Dims d = image_dims(I, t, A, t0);
  auto Ic = I.contiguous();
  auto tc = t.contiguous();
  auto out = at::empty_like(Ic, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recover_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    TORCH_CHECK(A.scalar_type() == c10::CppTypeToScalarType<op_t>::value, "fastdehaze::recover: A has the wrong compute dtype");
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* tp = tc.const_data_ptr<scalar_t>();
    auto Ac = A.contiguous();
    auto t0c = t0.contiguous();
    const op_t* Ap = Ac.const_data_ptr<op_t>();
    const op_t* t0p = t0c.const_data_ptr<op_t>();
    scalar_t* Jp = out.mutable_data_ptr<scalar_t>();
    const int64_t nblk = (d.HW + kCpuPixelBlock - 1) / kCpuPixelBlock;
    const op_t olo = static_cast<op_t>(lo), ohi = static_cast<op_t>(hi);
    at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
      op_t inv[kCpuPixelBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nblk, p0 = (task % nblk) * kCpuPixelBlock;
        const int64_t n = std::min(kCpuPixelBlock, d.HW - p0);
        for (int64_t c = 0; c < d.C; ++c) {
          const op_t t0v = t0p[b * d.C + c], Av = Ap[b * d.C + c];
          if (c == 0 || d.Ct != 1 || t0v != t0p[b * d.C + c - 1]) {
            const scalar_t* tr = tp + (b * d.Ct + (d.Ct == 1 ? 0 : c)) * d.HW + p0;
            for (int64_t p = 0; p < n; ++p) inv[p] = op_t(1) / am::clamp_t(static_cast<op_t>(tr[p]), t0v);
          }
          const scalar_t* Ir = Ip + (b * d.C + c) * d.HW + p0;
          scalar_t* Jr = Jp + (b * d.C + c) * d.HW + p0;
          if (clamp) {
            for (int64_t p = 0; p < n; ++p)
              Jr[p] = static_cast<scalar_t>(am::clamp_out(am::recover(static_cast<op_t>(Ir[p]), inv[p], Av), olo, ohi));
          } else {
            for (int64_t p = 0; p < n; ++p) Jr[p] = static_cast<scalar_t>(am::recover(static_cast<op_t>(Ir[p]), inv[p], Av));
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recover_backward_cpu(
    const at::Tensor& grad, const at::Tensor& I, const at::Tensor& t, const at::Tensor& A, const at::Tensor& t0,
    double lo, double hi, bool clamp, bool needs_I, bool needs_t, bool needs_A) {
  const Dims d = image_dims(I, t, A, t0);
  auto gc = grad.contiguous();
  auto Ic = I.contiguous();
  auto tc = t.contiguous();
  auto gI = needs_I ? at::empty_like(Ic, at::MemoryFormat::Contiguous) : at::empty({0}, I.options());
  auto gt = needs_t ? at::empty_like(tc, at::MemoryFormat::Contiguous) : at::empty({0}, t.options());
  auto gA = at::empty(needs_A ? at::IntArrayRef{d.B, d.C} : at::IntArrayRef{0}, A.options());
  if (Ic.numel() == 0 || !(needs_I || needs_t || needs_A)) {
    if (needs_A) gA.zero_();
    return {gI, gt, gA};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recover_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* tp = tc.const_data_ptr<scalar_t>();
    auto Ac = A.contiguous();
    auto t0c = t0.contiguous();
    const op_t* Ap = Ac.const_data_ptr<op_t>();
    const op_t* t0p = t0c.const_data_ptr<op_t>();
    scalar_t* gIp = needs_I ? gI.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gtp = needs_t ? gt.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t nblk = (d.HW + kCpuPixelBlock - 1) / kCpuPixelBlock;
    // grad_A partial sums per task, reduced serially afterwards (deterministic).
    std::vector<op_t> partA(needs_A ? d.B * nblk * d.C : 0, op_t(0));
    const op_t olo = static_cast<op_t>(lo), ohi = static_cast<op_t>(hi);
    at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
      op_t acc_t[kCpuPixelBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nblk, p0 = (task % nblk) * kCpuPixelBlock;
        const int64_t n = std::min(kCpuPixelBlock, d.HW - p0);
        if (d.Ct == 1) std::fill(acc_t, acc_t + n, op_t(0));
        for (int64_t c = 0; c < d.C; ++c) {
          const op_t t0v = t0p[b * d.C + c], Av = Ap[b * d.C + c];
          const int64_t off = (b * d.C + c) * d.HW + p0;
          const scalar_t* tr = tp + (b * d.Ct + (d.Ct == 1 ? 0 : c)) * d.HW + p0;
          if (d.Ct != 1) std::fill(acc_t, acc_t + n, op_t(0));
          op_t sA = 0;
          for (int64_t p = 0; p < n; ++p) {
            const op_t tv = static_cast<op_t>(tr[p]);
            const op_t inv = op_t(1) / am::clamp_t(tv, t0v);
            const op_t Iv = static_cast<op_t>(Ip[off + p]);
            op_t g = static_cast<op_t>(gp[off + p]);
            if (clamp && !am::clamp_out_pass(am::recover(Iv, inv, Av), olo, ohi)) g = op_t(0);
            if (gIp) gIp[off + p] = static_cast<scalar_t>(g * inv);
            acc_t[p] += am::clamp_t_grad(tv, t0v) == op_t(0) ? op_t(0) : -g * (Iv - Av) * inv * inv;
            sA += g * (op_t(1) - inv);
          }
          if (needs_A) partA[(b * nblk + task % nblk) * d.C + c] = sA;
          if (gtp && d.Ct != 1)
            for (int64_t p = 0; p < n; ++p) gtp[off + p] = static_cast<scalar_t>(acc_t[p]);
        }
        if (gtp && d.Ct == 1)
          for (int64_t p = 0; p < n; ++p) gtp[b * d.HW + p0 + p] = static_cast<scalar_t>(acc_t[p]);
      }
    });
    if (needs_A) {
      op_t* gAp = gA.mutable_data_ptr<op_t>();
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t c = 0; c < d.C; ++c) {
          op_t s = 0;
          for (int64_t k = 0; k < nblk; ++k) s += partA[(b * nblk + k) * d.C + c];
          gAp[b * d.C + c] = s;
        }
    }
  });
  return {gI, gt, gA};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("recover", &recover_cpu);
  m.impl("recover_backward", &recover_backward_cpu);
}

}  // namespace fastdehaze
