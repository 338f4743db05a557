// C++ CPU kernels of the box and guided filters (SPEC section 2).
//
// The box-filter engine (box_engine<K>: column strips sized for L2, float64 running sums, a ring of
// the last 2r + 1 rows' horizontal means) and the gray guided filter core live in
// fastdehaze/guided_filter_cpu.h, shared with the fused dehaze_dcp (csrc/cpu/dcp.cpp). Here: the
// box filter (K = 1) and its adjoint, the gray guided filter on tensors, and the colour guided
// filter (13 means in pass 1 -> a0..2, b; 4 means in pass 2 -> q).
// Non-finite values: when the inputs hold NaN/inf (one vectorised scan first), a slower path
// counts non-finite values in every window and writes NaN there (the reference's rule).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "fastdehaze/cpu_utils.h"
#include "fastdehaze/filters_math.h"
#include "fastdehaze/guided_filter_cpu.h"

namespace fastdehaze {
namespace {

namespace fm = filters_math;
using gf_cpu::box_engine;
using gf_cpu::has_nonfinite;

at::Tensor box_common(const at::Tensor& x, int64_t r, bool adjoint, const char* name) {
  TORCH_CHECK(x.dim() == 4, "fastdehaze::", name, ": x must be [B,C,H,W]");
  TORCH_CHECK(r >= 0, "fastdehaze::", name, ": r must be >= 0");
  check_cpu(x, "x");
  auto xc = x.contiguous();
  auto out = at::empty_like(xc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t P = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_filter_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    box_engine<1, op_t>(
        P, H, W, r, adjoint, has_nonfinite(xp, P * HW),
        [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t* line) {
          const scalar_t* src = xp + pl * HW + y * W;
          for (int64_t i = xa; i < xb; ++i) line[i - xa] = static_cast<op_t>(src[i]);
          return static_cast<const op_t*>(line);
        },
        [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
          scalar_t* dst = op + pl * HW + y * W + x0;
          for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(m[i]);
        });
  });
  return out;
}

at::Tensor box_filter_cpu(const at::Tensor& x, int64_t r) { return box_common(x, r, false, "box_filter"); }

at::Tensor box_filter_backward_cpu(const at::Tensor& grad, int64_t r) {
  return box_common(grad, r, true, "box_filter_backward");
}

at::Tensor guided_filter_cpu(const at::Tensor& I, const at::Tensor& p, int64_t r, double eps) {
  TORCH_CHECK(I.dim() == 4 && p.dim() == 4, "fastdehaze::guided_filter: I and p must be [B,C,H,W]");
  TORCH_CHECK(I.size(1) == 1 || I.size(1) == 3, "fastdehaze::guided_filter: I must have 1 or 3 channels");
  TORCH_CHECK(I.size(0) == p.size(0) && I.size(2) == p.size(2) && I.size(3) == p.size(3),
              "fastdehaze::guided_filter: I and p must have the same B, H, W");
  TORCH_CHECK(I.scalar_type() == p.scalar_type(), "fastdehaze::guided_filter: I must have p's dtype");
  TORCH_CHECK(r >= 0, "fastdehaze::guided_filter: r must be >= 0");
  check_cpu(I, "I");
  check_cpu(p, "p");
  auto Ic = I.contiguous(), pc = p.contiguous();
  auto out = at::empty_like(pc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t B = p.size(0), C = p.size(1), G = I.size(1), H = p.size(2), W = p.size(3), HW = H * W;
  const int64_t P = B * C;  // planes = (image, src channel)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "guided_filter_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const op_t e = static_cast<op_t>(eps);
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* pp = pc.const_data_ptr<scalar_t>();
    scalar_t* qp = out.mutable_data_ptr<scalar_t>();
    const bool nans = has_nonfinite(Ip, B * G * HW) || has_nonfinite(pp, P * HW);
    if (G == 1) {
      // gray guide: the shared core (fastdehaze/guided_filter_cpu.h); a, b stored [P][H][W][2]
      auto ab_t = at::empty({P * HW * 2}, pc.options().dtype(c10::CppTypeToScalarType<op_t>::value));
      gf_cpu::gray_guided_filter<op_t>(
          P, H, W, r, e, nans, ab_t.mutable_data_ptr<op_t>(),
          [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t* g, op_t* s) {
            const scalar_t* Ir = Ip + (pl / C) * HW + y * W;
            const scalar_t* pr = pp + pl * HW + y * W;
            for (int64_t x = xa; x < xb; ++x) g[x - xa] = static_cast<op_t>(Ir[x]), s[x - xa] = static_cast<op_t>(pr[x]);
          },
          [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
            const scalar_t* Ir = Ip + (pl / C) * HW + y * W + x0;
            scalar_t* q = qp + pl * HW + y * W + x0;
            for (int64_t i = 0; i < n; ++i) q[i] = static_cast<scalar_t>(m[i * 2] * static_cast<op_t>(Ir[i]) + m[i * 2 + 1]);
          });
    } else {
      // pass 1: 13 means (I0..2, the 6 products I_i I_j, p, I_g p) -> a0..2, b; pass 2: 4 means -> q
      std::atomic<bool> ab_bad{false};  // a or b not finite (NaN/inf input, or var + eps == 0)
      auto ab_t = at::empty({P * HW * 4}, pc.options().dtype(c10::CppTypeToScalarType<op_t>::value));
      op_t* ab = ab_t.mutable_data_ptr<op_t>();  // a, b interleaved per pixel (not zero-filled)
      box_engine<13, op_t>(
          P, H, W, r, false, nans,
          [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t* line) {
            const scalar_t* Ir = Ip + (pl / C) * 3 * HW + y * W;
            const scalar_t* pr = pp + pl * HW + y * W;
            for (int64_t x = xa; x < xb; ++x) {
              const op_t i0 = static_cast<op_t>(Ir[x]), i1 = static_cast<op_t>(Ir[HW + x]),
                         i2 = static_cast<op_t>(Ir[2 * HW + x]), pv = static_cast<op_t>(pr[x]);
              op_t* l = line + (x - xa) * 13;
              l[0] = i0, l[1] = i1, l[2] = i2;
              l[3] = i0 * i0, l[4] = i0 * i1, l[5] = i0 * i2, l[6] = i1 * i1, l[7] = i1 * i2, l[8] = i2 * i2;
              l[9] = pv, l[10] = i0 * pv, l[11] = i1 * pv, l[12] = i2 * pv;
            }
            return static_cast<const op_t*>(line);
          },
          [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
            op_t* o = ab + (pl * HW + y * W + x0) * 4;
            op_t z = 0;
            for (int64_t i = 0; i < n; ++i) {
              const op_t* mm = m + i * 13;
              fm::color_coeffs(mm, mm[9], mm + 10, mm + 3, e, o + i * 4, o[i * 4 + 3]);
              z += (o[i * 4] + o[i * 4 + 1] + o[i * 4 + 2] + o[i * 4 + 3]) * op_t(0);
            }
            if (z != op_t(0)) ab_bad.store(true, std::memory_order_relaxed);
          });
      box_engine<4, op_t>(
          P, H, W, r, false, nans || ab_bad.load(),
          [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t*) {
            return static_cast<const op_t*>(ab + (pl * HW + y * W + xa) * 4);  // read in place
          },
          [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
            const scalar_t* Ir = Ip + (pl / C) * 3 * HW + y * W + x0;
            scalar_t* q = qp + pl * HW + y * W + x0;
            for (int64_t i = 0; i < n; ++i) {
              const op_t* mm = m + i * 4;
              q[i] = static_cast<scalar_t>(mm[0] * static_cast<op_t>(Ir[i]) + mm[1] * static_cast<op_t>(Ir[HW + i]) +
                                           mm[2] * static_cast<op_t>(Ir[2 * HW + i]) + mm[3]);
            }
          });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("box_filter", &box_filter_cpu);
  m.impl("box_filter_backward", &box_filter_backward_cpu);
  m.impl("guided_filter", &guided_filter_cpu);
}

}  // namespace fastdehaze
