// C++ CPU kernels of the atmospheric scattering model ops (SPEC section 1).
// Layout: every tensor is taken contiguous NCHW. Forward: one task per chunk of an (image,
// channel) plane, a single vectorised pass (see for_each_plane_chunk); large float32 outputs
// are written with streaming stores (write_block). Backward: (image, block of pixels) tasks
// looping over the channels, so that the gradient of a broadcast t [B,1,H,W] is summed over
// the channels in a per-block accumulator and parameter gradients are reduced per block, then
// serially (deterministic).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "fastdehaze/asm_math.h"
#include "fastdehaze/cpu_utils.h"

namespace fastdehaze {
namespace {

namespace am = asm_math;

// Outputs at least this large are written with non-temporal (streaming) stores: they do not fit
// in the last-level cache together with the inputs, and streaming them skips the read-for-
// ownership of every output line (about a third less memory traffic for a map-like op).
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// dst[p] = f(p) for p in [0, n). With `stream` (float32 storage on an
// AVX-512 build) the block is computed into an L1 buffer by the same vectorised loop and then
// written with 64-byte streaming stores; call stream_fence() before the output is read.
template <typename scalar_t, typename F>
inline void write_block(scalar_t* __restrict__ dst, int64_t n, bool stream, const F& f) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) {
      alignas(64) float buf[kCpuPixelBlock];
      for (int64_t q = 0; q < n; q += kCpuPixelBlock) {
        const int64_t m = std::min(kCpuPixelBlock, n - q);
        for (int64_t p = 0; p < m; ++p) buf[p] = f(q + p);
        float* __restrict__ out = dst + q;
        int64_t p = 0;
        for (; p < m && (reinterpret_cast<std::uintptr_t>(out + p) & 63) != 0; ++p) out[p] = buf[p];
        for (; p + 16 <= m; p += 16) _mm512_stream_ps(out + p, _mm512_loadu_ps(buf + p));
        for (; p < m; ++p) out[p] = buf[p];
      }
      return;
    }
  }
#endif
  (void)stream;
#pragma GCC ivdep
  for (int64_t p = 0; p < n; ++p) dst[p] = static_cast<scalar_t>(f(p));
}

inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

// The threshold can be moved with FASTDEHAZE_CPU_STREAM_BYTES (read once; for experiments).
inline bool use_stream(const at::Tensor& out) {
  static const int64_t threshold = [] {
    const char* v = std::getenv("FASTDEHAZE_CPU_STREAM_BYTES");
    return v ? std::atoll(v) : kStreamBytes;
  }();
  return out.scalar_type() == at::kFloat && static_cast<int64_t>(out.nbytes()) >= threshold;
}

// Forward kernels split each (image, channel) plane into chunks of at least kPlaneChunk pixels
// (whole planes when there are enough of them to keep every thread busy), one task per (image,
// chunk, channel), a single vectorised pass each: every task reads and writes long sequential
// runs, which the hardware prefetchers follow (2048-pixel blocks hopping between the channel
// planes measured about 30% slower), and a shared map chunk (t, depth, K [B,1,H,W]) is re-read
// by the next channel's task from cache.
constexpr int64_t kPlaneChunk = 16384;

// body(b, c, off, moff, n): off indexes the image-shaped tensors, moff the map (Cm channels).
template <typename F>
void for_each_plane_chunk(int64_t B, int64_t C, int64_t HW, int64_t Cm, const F& body) {
  // As few chunks per plane as give every thread about 4 tasks (longer runs: fewer prefetch
  // stream restarts), but at least kPlaneChunk pixels each.
  const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads() + B * C - 1) / std::max<int64_t>(1, B * C));
  const int64_t chunk = std::max(kPlaneChunk, ((HW + want - 1) / want + 15) / 16 * 16);
  const int64_t nchunk = (HW + chunk - 1) / chunk;
  at::parallel_for(0, B * C * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      // task = (b, chunk, c): the channels of one chunk run back to back, so that a shared map
      // chunk (64 KiB of float) is re-read from L2.
      const int64_t b = task / (nchunk * C), rem = task % (nchunk * C);
      const int64_t c = rem % C, p0 = (rem / C) * chunk;
      body(b, c, (b * C + c) * HW + p0, (b * Cm + (Cm == 1 ? 0 : c)) * HW + p0, std::min(chunk, HW - p0));
    }
    stream_fence();  // the bodies may have used streaming stores (write_block)
  });
}

// Backward kernels keep a per-pixel accumulator of the map gradient (summed over the channels
// for a shared map), so they walk (image, block of kBwdBlock pixels) tasks, looping over the
// channels inside; blocks of 32 KiB (float) keep the channel hops rare and the scratch in L2.
constexpr int64_t kBwdBlock = 8192;

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
    const op_t olo = static_cast<op_t>(lo), ohi = static_cast<op_t>(hi);
    const bool stream = use_stream(out);
    for_each_plane_chunk(d.B, d.C, d.HW, d.Ct, [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n) {
      const op_t t0v = t0p[b * d.C + c], Av = Ap[b * d.C + c];
      const scalar_t* __restrict__ Ir = Ip + off;
      const scalar_t* __restrict__ tr = tp + moff;
      if (clamp) {
        write_block(Jp + off, n, stream, [&](int64_t p) {
          return am::clamp_out(am::recover_div(static_cast<op_t>(Ir[p]), am::clamp_t(static_cast<op_t>(tr[p]), t0v), Av),
                               olo, ohi);
        });
      } else {
        write_block(Jp + off, n, stream, [&](int64_t p) {
          return am::recover_div(static_cast<op_t>(Ir[p]), am::clamp_t(static_cast<op_t>(tr[p]), t0v), Av);
        });
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
    const int64_t nblk = (d.HW + kBwdBlock - 1) / kBwdBlock;
    // grad_A partial sums per task, reduced serially afterwards (deterministic).
    std::vector<op_t> partA(needs_A ? d.B * nblk * d.C : 0, op_t(0));
    const op_t olo = static_cast<op_t>(lo), ohi = static_cast<op_t>(hi);
    at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
      op_t acc_t[kBwdBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nblk, p0 = (task % nblk) * kBwdBlock;
        const int64_t n = std::min(kBwdBlock, d.HW - p0);
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

// ---- synthesize_haze, transmission_from_depth, recompose_k ------------------------------------
// Common layout: an image-shaped tensor [B,C,HW], a per-pixel map [B,Cm,HW] with Cm in {1, C}
// (t, depth or K) and per-(image, channel) parameters [B,C] (A, beta or b). Forward tasks are
// plane chunks (for_each_plane_chunk); backward tasks are (image, block of kBwdBlock pixels)
// looping over the channels. Inner loops are branch-free and vectorise.

struct Layout {
  int64_t B, C, HW, Cm, nblk;
};

Layout make_layout(const char* op, int64_t B, int64_t C, int64_t HW, const at::Tensor& M, const at::Tensor& P) {
  TORCH_CHECK(M.dim() == 4 && M.size(0) == B && M.size(2) * M.size(3) == HW && (M.size(1) == 1 || M.size(1) == C), "fastdehaze::",
              op, ": the per-pixel map must be [B,1,H,W] or [B,C,H,W] matching the image");
  TORCH_CHECK(P.numel() == B * C, "fastdehaze::", op, ": the parameter must be [B,C]");
  return {B, C, HW, M.size(1), (HW + kBwdBlock - 1) / kBwdBlock};
}

Layout image_layout(const char* op, const at::Tensor& X, const at::Tensor& M, const at::Tensor& P) {
  TORCH_CHECK(X.dim() == 4, "fastdehaze::", op, ": the image must be [B,C,H,W]");
  TORCH_CHECK(M.scalar_type() == X.scalar_type(), "fastdehaze::", op, ": the per-pixel map must have the image's dtype");
  TORCH_CHECK(M.dim() == 4 && M.size(2) == X.size(2) && M.size(3) == X.size(3), "fastdehaze::", op,
              ": the per-pixel map must match the image's H, W");
  return make_layout(op, X.size(0), X.size(1), X.size(2) * X.size(3), M, P);
}

template <typename scalar_t>
void check_param_dtype(const char* op, const at::Tensor& P) {
  TORCH_CHECK(P.scalar_type() == c10::CppTypeToScalarType<opmath_t<scalar_t>>::value, "fastdehaze::", op,
              ": the [B,C] parameter has the wrong compute dtype");
}

template <typename F>
void for_each_block(const Layout& d, const F& body) {
  for_each_plane_chunk(d.B, d.C, d.HW, d.Cm, body);
}

// Backward walk: body(b, c, off, moff, n, acc) adds the map gradient of channel c into acc[0..n)
// (summed over the channels when Cm == 1) and returns the block's partial sums of the gradients
// of the (b, c) parameters (up to two: {P, P2}). The map gradient is written to gM (if not
// null), the parameter gradients, reduced serially over the blocks (deterministic), to gP and
// gP2 (each if not null).
template <typename op_t, typename scalar_t, typename F>
void for_each_block_backward(const Layout& d, scalar_t* gM, op_t* gP, op_t* gP2, const F& body) {
  const bool want = gP != nullptr || gP2 != nullptr;
  std::vector<std::pair<op_t, op_t>> part(want ? d.B * d.nblk * d.C : 0, {op_t(0), op_t(0)});
  at::parallel_for(0, d.B * d.nblk, 1, [&](int64_t begin, int64_t end) {
    op_t acc[kBwdBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / d.nblk, blk = task % d.nblk, p0 = blk * kBwdBlock;
      const int64_t n = std::min(kBwdBlock, d.HW - p0);
      if (d.Cm == 1) std::fill(acc, acc + n, op_t(0));
      for (int64_t c = 0; c < d.C; ++c) {
        const int64_t moff = (b * d.Cm + (d.Cm == 1 ? 0 : c)) * d.HW + p0;
        if (d.Cm != 1) std::fill(acc, acc + n, op_t(0));
        const std::pair<op_t, op_t> s = body(b, c, (b * d.C + c) * d.HW + p0, moff, n, acc);
        if (want) part[(b * d.nblk + blk) * d.C + c] = s;
        if (gM && d.Cm != 1)
          for (int64_t p = 0; p < n; ++p) gM[moff + p] = static_cast<scalar_t>(acc[p]);
      }
      if (gM && d.Cm == 1)
        for (int64_t p = 0; p < n; ++p) gM[b * d.HW + p0 + p] = static_cast<scalar_t>(acc[p]);
    }
  });
  if (want)
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t c = 0; c < d.C; ++c) {
        op_t s1 = 0, s2 = 0;
        for (int64_t k = 0; k < d.nblk; ++k) {
          s1 += part[(b * d.nblk + k) * d.C + c].first;
          s2 += part[(b * d.nblk + k) * d.C + c].second;
        }
        if (gP) gP[b * d.C + c] = s1;
        if (gP2) gP2[b * d.C + c] = s2;
      }
}

// Gradient outputs of a backward: like the input when needed, else an empty [0] tensor.
at::Tensor grad_like(const at::Tensor& x, bool needed) {
  return needed ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
}
at::Tensor grad_param(const Layout& d, const at::Tensor& P, bool needed) {
  return needed ? at::empty({d.B, d.C}, P.options()) : at::empty({0}, P.options());
}

at::Tensor synthesize_haze_cpu(const at::Tensor& J, const at::Tensor& t, const at::Tensor& A) {
  const Layout d = image_layout("synthesize_haze", J, t, A);
  auto Jc = J.contiguous(), tc = t.contiguous(), Ac = A.contiguous();
  auto out = at::empty_like(Jc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("synthesize_haze", A);
    const scalar_t* Jp = Jc.const_data_ptr<scalar_t>();
    const scalar_t* tp = tc.const_data_ptr<scalar_t>();
    const op_t* Ap = Ac.const_data_ptr<op_t>();
    scalar_t* Ip = out.mutable_data_ptr<scalar_t>();
    const bool stream = use_stream(out);
    for_each_block(d, [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n) {
      const op_t Av = Ap[b * d.C + c];
      const scalar_t* __restrict__ Jr = Jp + off;
      const scalar_t* __restrict__ tr = tp + moff;
      write_block(Ip + off, n, stream,
                  [&](int64_t p) { return am::synthesize(static_cast<op_t>(Jr[p]), static_cast<op_t>(tr[p]), Av); });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> synthesize_haze_backward_cpu(const at::Tensor& grad, const at::Tensor& J,
                                                                            const at::Tensor& t, const at::Tensor& A,
                                                                            bool needs_J, bool needs_t, bool needs_A) {
  const Layout d = image_layout("synthesize_haze_backward", J, t, A);
  auto gc = grad.contiguous(), Jc = J.contiguous(), tc = t.contiguous(), Ac = A.contiguous();
  auto gJ = grad_like(Jc, needs_J), gt = grad_like(tc, needs_t), gA = grad_param(d, A, needs_A);
  if (Jc.numel() == 0 || !(needs_J || needs_t || needs_A)) {
    if (needs_A) gA.zero_();
    if (needs_t) gt.zero_();
    return {gJ, gt, gA};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("synthesize_haze_backward", A);
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* Jp = Jc.const_data_ptr<scalar_t>();
    const scalar_t* tp = tc.const_data_ptr<scalar_t>();
    const op_t* Ap = Ac.const_data_ptr<op_t>();
    scalar_t* gJp = needs_J ? gJ.mutable_data_ptr<scalar_t>() : nullptr;
    for_each_block_backward<op_t, scalar_t>(
        d, needs_t ? gt.mutable_data_ptr<scalar_t>() : nullptr, needs_A ? gA.mutable_data_ptr<op_t>() : nullptr, nullptr,
        [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n, op_t* __restrict__ acc) {
          const op_t Av = Ap[b * d.C + c];
          const scalar_t* __restrict__ gr = gp + off;
          const scalar_t* __restrict__ Jr = Jp + off;
          const scalar_t* __restrict__ tr = tp + moff;
          op_t sA = 0;
          if (gJp) {
            scalar_t* __restrict__ gJr = gJp + off;
            for (int64_t p = 0; p < n; ++p) gJr[p] = static_cast<scalar_t>(static_cast<op_t>(gr[p]) * static_cast<op_t>(tr[p]));
          }
          for (int64_t p = 0; p < n; ++p) {
            const op_t g = static_cast<op_t>(gr[p]);
            acc[p] += g * am::synthesize_dt(static_cast<op_t>(Jr[p]), Av);
            sA += g * am::synthesize_dA(static_cast<op_t>(tr[p]));
          }
          return std::pair<op_t, op_t>{sA, op_t(0)};
        });
  });
  return {gJ, gt, gA};
}

// Synthesis straight from depth in one pass: I = (J - A) t + A, t = exp(-beta d) per channel.
at::Tensor synthesize_haze_depth_cpu(const at::Tensor& J, const at::Tensor& depth, const at::Tensor& A,
                                     const at::Tensor& beta) {
  const Layout d = image_layout("synthesize_haze_depth", J, depth, A);
  TORCH_CHECK(beta.numel() == d.B * d.C && beta.scalar_type() == A.scalar_type(),
              "fastdehaze::synthesize_haze_depth: beta must be [B,C] like A");
  auto Jc = J.contiguous(), dc = depth.contiguous(), Ac = A.contiguous(), bc = beta.contiguous();
  auto out = at::empty_like(Jc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_depth_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("synthesize_haze_depth", A);
    const scalar_t* Jp = Jc.const_data_ptr<scalar_t>();
    const scalar_t* dp = dc.const_data_ptr<scalar_t>();
    const op_t* Ap = Ac.const_data_ptr<op_t>();
    const op_t* bp = bc.const_data_ptr<op_t>();
    scalar_t* Ip = out.mutable_data_ptr<scalar_t>();
    const bool stream = use_stream(out);
    for_each_block(d, [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n) {
      const op_t Av = Ap[b * d.C + c], bv = bp[b * d.C + c];
      const scalar_t* __restrict__ Jr = Jp + off;
      const scalar_t* __restrict__ dr = dp + moff;
      write_block(Ip + off, n, stream, [&](int64_t p) {
        return am::synthesize(static_cast<op_t>(Jr[p]), am::transmission(static_cast<op_t>(dr[p]), bv), Av);
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> synthesize_haze_depth_backward_cpu(
    const at::Tensor& grad, const at::Tensor& J, const at::Tensor& depth, const at::Tensor& A, const at::Tensor& beta,
    bool needs_J, bool needs_depth, bool needs_A, bool needs_beta) {
  const Layout d = image_layout("synthesize_haze_depth_backward", J, depth, A);
  TORCH_CHECK(beta.numel() == d.B * d.C && beta.scalar_type() == A.scalar_type(),
              "fastdehaze::synthesize_haze_depth_backward: beta must be [B,C] like A");
  auto gc = grad.contiguous(), Jc = J.contiguous(), dc = depth.contiguous(), Ac = A.contiguous(), bc = beta.contiguous();
  auto gJ = grad_like(Jc, needs_J), gd = grad_like(dc, needs_depth);
  auto gA = grad_param(d, A, needs_A), gb = grad_param(d, beta, needs_beta);
  if (Jc.numel() == 0 || !(needs_J || needs_depth || needs_A || needs_beta)) {
    if (needs_A) gA.zero_();
    if (needs_beta) gb.zero_();
    if (needs_depth) gd.zero_();
    return {gJ, gd, gA, gb};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_depth_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("synthesize_haze_depth_backward", A);
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* Jp = Jc.const_data_ptr<scalar_t>();
    const scalar_t* dp = dc.const_data_ptr<scalar_t>();
    const op_t* Ap = Ac.const_data_ptr<op_t>();
    const op_t* bp = bc.const_data_ptr<op_t>();
    scalar_t* gJp = needs_J ? gJ.mutable_data_ptr<scalar_t>() : nullptr;
    for_each_block_backward<op_t, scalar_t>(
        d, needs_depth ? gd.mutable_data_ptr<scalar_t>() : nullptr, needs_A ? gA.mutable_data_ptr<op_t>() : nullptr,
        needs_beta ? gb.mutable_data_ptr<op_t>() : nullptr,
        [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n, op_t* __restrict__ acc) {
          const op_t Av = Ap[b * d.C + c], bv = bp[b * d.C + c];
          const scalar_t* __restrict__ gr = gp + off;
          const scalar_t* __restrict__ Jr = Jp + off;
          const scalar_t* __restrict__ dr = dp + moff;
          op_t sA = 0, sb = 0;
          for (int64_t p = 0; p < n; ++p) {
            const op_t g = static_cast<op_t>(gr[p]), dv = static_cast<op_t>(dr[p]);
            const op_t tv = am::transmission(dv, bv);
            const op_t gt = g * am::synthesize_dt(static_cast<op_t>(Jr[p]), Av);  // dL/dt
            if (gJp) gJp[off + p] = static_cast<scalar_t>(g * tv);
            acc[p] += gt * am::transmission_dd(tv, bv);
            sA += g * am::synthesize_dA(tv);
            sb += gt * am::transmission_dbeta(tv, dv);
          }
          return std::pair<op_t, op_t>{sA, sb};
        });
  });
  return {gJ, gd, gA, gb};
}

at::Tensor transmission_from_depth_cpu(const at::Tensor& depth, const at::Tensor& beta) {
  TORCH_CHECK(depth.dim() == 4 && beta.dim() == 2 && beta.size(0) == depth.size(0), "fastdehaze::transmission_from_depth: "
              "depth must be [B,1|C,H,W] and beta [B,C]");
  const Layout d = make_layout("transmission_from_depth", depth.size(0), beta.size(1), depth.size(2) * depth.size(3), depth, beta);
  auto dc = depth.contiguous(), bc = beta.contiguous();
  auto out = at::empty({d.B, d.C, depth.size(2), depth.size(3)}, depth.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, depth.scalar_type(), "transmission_from_depth_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("transmission_from_depth", beta);
    const scalar_t* dp = dc.const_data_ptr<scalar_t>();
    const op_t* bp = bc.const_data_ptr<op_t>();
    scalar_t* tp = out.mutable_data_ptr<scalar_t>();
    const bool stream = use_stream(out);
    for_each_block(d, [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n) {
      const op_t bv = bp[b * d.C + c];
      const scalar_t* __restrict__ dr = dp + moff;
      write_block(tp + off, n, stream, [&](int64_t p) { return am::transmission(static_cast<op_t>(dr[p]), bv); });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> transmission_from_depth_backward_cpu(const at::Tensor& grad, const at::Tensor& depth,
                                                                        const at::Tensor& beta, bool needs_depth,
                                                                        bool needs_beta) {
  TORCH_CHECK(depth.dim() == 4 && beta.dim() == 2 && beta.size(0) == depth.size(0), "fastdehaze::transmission_from_depth_backward: "
              "depth must be [B,1|C,H,W] and beta [B,C]");
  const Layout d = make_layout("transmission_from_depth_backward", depth.size(0), beta.size(1), depth.size(2) * depth.size(3),
                               depth, beta);
  auto gc = grad.contiguous(), dc = depth.contiguous(), bc = beta.contiguous();
  TORCH_CHECK(gc.numel() == d.B * d.C * d.HW, "fastdehaze::transmission_from_depth_backward: grad must be [B,C,H,W]");
  auto gd = grad_like(dc, needs_depth), gb = grad_param(d, beta, needs_beta);
  if (gc.numel() == 0 || !(needs_depth || needs_beta)) {
    if (needs_beta) gb.zero_();
    if (needs_depth) gd.zero_();
    return {gd, gb};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, depth.scalar_type(), "transmission_from_depth_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("transmission_from_depth_backward", beta);
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* dp = dc.const_data_ptr<scalar_t>();
    const op_t* bp = bc.const_data_ptr<op_t>();
    for_each_block_backward<op_t, scalar_t>(
        d, needs_depth ? gd.mutable_data_ptr<scalar_t>() : nullptr, needs_beta ? gb.mutable_data_ptr<op_t>() : nullptr, nullptr,
        [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n, op_t* __restrict__ acc) {
          const op_t bv = bp[b * d.C + c];
          const scalar_t* __restrict__ gr = gp + off;
          const scalar_t* __restrict__ dr = dp + moff;
          op_t sb = 0;
          for (int64_t p = 0; p < n; ++p) {
            const op_t dv = static_cast<op_t>(dr[p]);
            const op_t gt = static_cast<op_t>(gr[p]) * am::transmission(dv, bv);
            acc[p] += gt * am::transmission_dd(op_t(1), bv);
            sb += gt * am::transmission_dbeta(op_t(1), dv);
          }
          return std::pair<op_t, op_t>{sb, op_t(0)};
        });
  });
  return {gd, gb};
}

at::Tensor recompose_k_cpu(const at::Tensor& I, const at::Tensor& K, const at::Tensor& bias) {
  const Layout d = image_layout("recompose_k", I, K, bias);
  auto Ic = I.contiguous(), Kc = K.contiguous(), bc = bias.contiguous();
  auto out = at::empty_like(Ic, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recompose_k_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("recompose_k", bias);
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* Kp = Kc.const_data_ptr<scalar_t>();
    const op_t* bp = bc.const_data_ptr<op_t>();
    scalar_t* Jp = out.mutable_data_ptr<scalar_t>();
    const bool stream = use_stream(out);
    for_each_block(d, [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n) {
      const op_t bv = bp[b * d.C + c];
      const scalar_t* __restrict__ Ir = Ip + off;
      const scalar_t* __restrict__ Kr = Kp + moff;
      write_block(Jp + off, n, stream,
                  [&](int64_t p) { return am::recompose_k(static_cast<op_t>(Ir[p]), static_cast<op_t>(Kr[p]), bv); });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recompose_k_backward_cpu(const at::Tensor& grad, const at::Tensor& I,
                                                                        const at::Tensor& K, const at::Tensor& bias,
                                                                        bool needs_I, bool needs_K, bool needs_b) {
  const Layout d = image_layout("recompose_k_backward", I, K, bias);
  auto gc = grad.contiguous(), Ic = I.contiguous(), Kc = K.contiguous();
  auto gI = grad_like(Ic, needs_I), gK = grad_like(Kc, needs_K), gb = grad_param(d, bias, needs_b);
  if (Ic.numel() == 0 || !(needs_I || needs_K || needs_b)) {
    if (needs_b) gb.zero_();
    if (needs_K) gK.zero_();
    return {gI, gK, gb};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recompose_k_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    check_param_dtype<scalar_t>("recompose_k_backward", bias);
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* Kp = Kc.const_data_ptr<scalar_t>();
    scalar_t* gIp = needs_I ? gI.mutable_data_ptr<scalar_t>() : nullptr;
    for_each_block_backward<op_t, scalar_t>(
        d, needs_K ? gK.mutable_data_ptr<scalar_t>() : nullptr, needs_b ? gb.mutable_data_ptr<op_t>() : nullptr, nullptr,
        [&](int64_t b, int64_t c, int64_t off, int64_t moff, int64_t n, op_t* __restrict__ acc) {
          const scalar_t* __restrict__ gr = gp + off;
          const scalar_t* __restrict__ Ir = Ip + off;
          const scalar_t* __restrict__ Kr = Kp + moff;
          op_t sb = 0;
          if (gIp) {
            scalar_t* __restrict__ gIr = gIp + off;
            for (int64_t p = 0; p < n; ++p) gIr[p] = static_cast<scalar_t>(static_cast<op_t>(gr[p]) * static_cast<op_t>(Kr[p]));
          }
          for (int64_t p = 0; p < n; ++p) {
            const op_t g = static_cast<op_t>(gr[p]);
            acc[p] += g * am::recompose_k_dK(static_cast<op_t>(Ir[p]));
            sb += g;
          }
          return std::pair<op_t, op_t>{sb, op_t(0)};
        });
  });
  return {gI, gK, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("recover", &recover_cpu);
  m.impl("recover_backward", &recover_backward_cpu);
  m.impl("synthesize_haze", &synthesize_haze_cpu);
  m.impl("synthesize_haze_backward", &synthesize_haze_backward_cpu);
  m.impl("synthesize_haze_depth", &synthesize_haze_depth_cpu);
  m.impl("synthesize_haze_depth_backward", &synthesize_haze_depth_backward_cpu);
  m.impl("transmission_from_depth", &transmission_from_depth_cpu);
  m.impl("transmission_from_depth_backward", &transmission_from_depth_backward_cpu);
  m.impl("recompose_k", &recompose_k_cpu);
  m.impl("recompose_k_backward", &recompose_k_backward_cpu);
}

}  // namespace fastdehaze
