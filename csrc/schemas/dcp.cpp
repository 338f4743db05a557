// Schemas of the dark channel prior ops (SPEC section 2). The Python layer
// (fastdehaze/ops/dcp.py) validates arguments (patch a positive odd int, top/omega ranges) and
// normalises A to a contiguous [B, C] tensor of the compute dtype (float32 for half inputs,
// float64 for float64) before calling these. The Triton variants (`<name>_triton`) are
// defined in Python with the same schemas.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "fastdehaze/common.h"
#include "fastdehaze/dcp_math.h"

namespace {

// Host run of the CUDA backward's gather (dcp_math::col_adjoint / row_adjoint, the index logic
// of csrc/cuda/dcp.cu col_adjoint_kernel and row_adjoint_kernel) for tests/test_cuda_grid.py:
// grad [B,H,W] float64, rows_a/cols_a/chan [B,H,W] int32 -> grad_I [B,C,H,W] float64.
at::Tensor dcp_gather_backward(const at::Tensor& grad, const at::Tensor& rows_a, const at::Tensor& cols_a,
                               const at::Tensor& chan, int64_t C, int64_t patch) {
  TORCH_CHECK(grad.dim() == 3 && grad.scalar_type() == at::kDouble, "fastdehaze::_dcp_gather_backward: grad must be [B,H,W] float64");
  for (const at::Tensor* t : {&rows_a, &cols_a, &chan})
    TORCH_CHECK(t->sizes() == grad.sizes() && t->scalar_type() == at::kInt, "fastdehaze::_dcp_gather_backward: winners must be [B,H,W] int32");
  TORCH_CHECK(patch > 0 && patch % 2 == 1 && C >= 1, "fastdehaze::_dcp_gather_backward: bad patch or C");
  const int64_t B = grad.size(0), H = grad.size(1), W = grad.size(2), HW = H * W, r = patch / 2;
  auto g = grad.contiguous(), ra = rows_a.contiguous(), ca = cols_a.contiguous(), ch = chan.contiguous();
  auto out = at::empty({B, C, H, W}, grad.options());
  std::vector<double> g1(static_cast<size_t>(HW));
  const double* gp = g.const_data_ptr<double>();
  const int32_t *rp = ra.const_data_ptr<int32_t>(), *cp = ca.const_data_ptr<int32_t>(), *hp = ch.const_data_ptr<int32_t>();
  double* op = out.mutable_data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t off = b * HW;
    auto g_at = [&](int64_t i) { return gp[off + i]; };
    for (int64_t i = 0; i < HW; ++i)
      g1[i] = fastdehaze::dcp_math::col_adjoint<double>(g_at, cp + off, i / W, i % W, H, W, r);
    for (int64_t i = 0; i < HW; ++i) {
      const int64_t ys = i / W, xs = i % W;
      const double v = fastdehaze::dcp_math::row_adjoint<double>(g1.data() + ys * W, rp + off + ys * W, xs, W, r);
      for (int64_t c = 0; c < C; ++c) op[(b * C + c) * HW + i] = c == hp[off + i] ? v : 0.0;
    }
  }
  return out;
}

// Host run of the CUDA forward's blocked line pass (dcp_math::window_task, the index logic of
// csrc/cuda/dcp.cu rows_kernel / cols_kernel), tasks run last to first (they are independent):
// vals [L, n] (lines = rows) or [n, L] (columns = lines, stride L) float64 -> (extremum over the
// clipped window of radius patch/2, its position), both shaped like vals.
std::tuple<at::Tensor, at::Tensor> dcp_window_tasks(const at::Tensor& vals, int64_t patch, bool is_max, bool columns) {
  TORCH_CHECK(vals.dim() == 2 && vals.scalar_type() == at::kDouble, "fastdehaze::_dcp_window_tasks: vals must be 2-D float64");
  TORCH_CHECK(patch > 0 && patch % 2 == 1, "fastdehaze::_dcp_window_tasks: patch must be a positive odd integer");
  auto v = vals.contiguous();
  auto out = at::empty_like(v), hv = at::empty_like(v);
  auto pos = at::empty(v.sizes(), v.options().dtype(at::kInt)), ha = at::empty_like(pos);
  const int64_t L = columns ? v.size(1) : v.size(0), n = columns ? v.size(0) : v.size(1);
  if (L == 0 || n == 0) return {out, pos};
  const int64_t s = columns ? L : 1, ls = columns ? 1 : n;
  const int32_t r = static_cast<int32_t>(std::min<int64_t>(patch / 2, n)), ni = static_cast<int32_t>(n);
  const double ident = is_max ? -INFINITY : INFINITY;
  const double* vp = v.const_data_ptr<double>();
  double *op = out.mutable_data_ptr<double>(), *hp = hv.mutable_data_ptr<double>();
  int32_t *pp = pos.mutable_data_ptr<int32_t>(), *hap = ha.mutable_data_ptr<int32_t>();
  for (int64_t l = 0; l < L; ++l)
    for (int32_t j = fastdehaze::dcp_math::line_tasks(ni, r) - 1; j >= 0; --j) {
      const int64_t o = l * ls;
      if (is_max)
        fastdehaze::dcp_math::window_task<true, true, double>(vp + o, s, ni, r, j, hp + o, hap + o, op + o, pp + o, false, 0.0, ident);
      else
        fastdehaze::dcp_math::window_task<false, true, double>(vp + o, s, ni, r, j, hp + o, hap + o, op + o, pp + o, false, 0.0, ident);
    }
  return {out, pos};
}

// Host run of the CUDA atmospheric light's multi-block selection (dcp_math::select_digit over
// the merged chunk histograms, then the threshold ties ranked through per-chunk counts and
// exclusive chunk offsets, as csrc/cuda/dcp.cu atmo_*_kernel do): dark [B, HW] float32 or
// float64 -> the selected pixels [B, HW] bool (the k largest, stable ties, NaN largest).
template <typename M>
void atmo_select_image(const M* d, int64_t HW, long long k, bool* out) {
  using K = typename fastdehaze::dcp_math::KeyOf<M>::type;
  namespace dm = fastdehaze::dcp_math;
  const int64_t nchunk = (HW + dm::kAtmoChunk - 1) / dm::kAtmoChunk;
  K prefix = 0;
  long long kk = k;
  for (int shift = static_cast<int>(sizeof(K) * 8) - 8; shift >= 0; shift -= 8) {
    const K mask = shift + 8 >= static_cast<int>(sizeof(K) * 8) ? K(0) : ~K(0) << (shift + 8);
    std::vector<unsigned int> hist(256, 0);
    for (int64_t c = 0; c < nchunk; ++c)  // chunk histograms, merged (order-free integer adds)
      for (int64_t i = c * dm::kAtmoChunk; i < std::min<int64_t>(HW, (c + 1) * dm::kAtmoChunk); ++i) {
        const K key = dm::order_key(d[i]);
        if ((key & mask) == prefix) ++hist[(key >> shift) & 0xFF];
      }
    const int dg = dm::select_digit(hist.data(), kk);
    prefix |= static_cast<K>(dg) << shift;
  }
  std::vector<long long> off(static_cast<size_t>(nchunk), 0);
  long long run = 0;
  for (int64_t c = 0; c < nchunk; ++c) {
    off[c] = run;
    for (int64_t i = c * dm::kAtmoChunk; i < std::min<int64_t>(HW, (c + 1) * dm::kAtmoChunk); ++i)
      run += dm::order_key(d[i]) == prefix ? 1 : 0;
  }
  for (int64_t c = nchunk - 1; c >= 0; --c) {  // chunks in any order: each needs only its offset
    long long before = off[c];
    for (int64_t i = c * dm::kAtmoChunk; i < std::min<int64_t>(HW, (c + 1) * dm::kAtmoChunk); ++i) {
      const K key = dm::order_key(d[i]);
      const bool eq = key == prefix;
      out[i] = key > prefix || (eq && before < kk);
      before += eq ? 1 : 0;
    }
  }
}

at::Tensor atmo_select(const at::Tensor& dark, int64_t k) {
  TORCH_CHECK(dark.dim() == 2 && (dark.scalar_type() == at::kDouble || dark.scalar_type() == at::kFloat),
              "fastdehaze::_atmo_select: dark must be [B, HW] float32 or float64");
  TORCH_CHECK(k >= 1, "fastdehaze::_atmo_select: k must be >= 1");
  auto dc = dark.contiguous();
  auto out = at::empty(dc.sizes(), dc.options().dtype(at::kBool));
  const int64_t B = dc.size(0), HW = dc.size(1);
  const long long kk = std::min<int64_t>(k, HW);
  for (int64_t b = 0; b < B && HW > 0; ++b) {
    if (dc.scalar_type() == at::kDouble)
      atmo_select_image(dc.const_data_ptr<double>() + b * HW, HW, kk, out.mutable_data_ptr<bool>() + b * HW);
    else
      atmo_select_image(dc.const_data_ptr<float>() + b * HW, HW, kk, out.mutable_data_ptr<bool>() + b * HW);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // I [B,C,H,W] -> [B,1,H,W] (I's dtype): min (max) over channels then over the clipped window.
  m.def("dark_channel(Tensor I, int patch) -> Tensor");
  m.def("bright_channel(Tensor I, int patch) -> Tensor");
  // grad [B,1,H,W] -> grad_I [B,C,H,W]: each output's gradient to its first (row-major, lowest
  // channel) extremal input element.
  m.def("dark_channel_backward(Tensor grad, Tensor I, int patch) -> Tensor");
  m.def("bright_channel_backward(Tensor grad, Tensor I, int patch) -> Tensor");
  // I [B,C,H,W], dark [B,1,H,W] (I's dtype), k >= 1 -> A [B,C] compute dtype: mean of I over the
  // k largest dark values (stable ties, NaN largest).
  m.def("atmospheric_light(Tensor I, Tensor dark, int k) -> Tensor");
  // I [B,C,H,W], A [B,C] compute dtype -> 1 - omega * dark_channel(I / max(A, 1e-6)) [B,1,H,W].
  m.def("transmission(Tensor I, Tensor A, float omega, int patch) -> Tensor");
  // The whole DCP pipeline fused (CPU only): -> (J [B,C,H,W], t [B,1,H,W] (I's dtype), A [B,C]
  // compute dtype).
  // Test hook: the CUDA backward's gather run on the host (see dcp_gather_backward above).
  m.def("_dcp_window_tasks(Tensor vals, int patch, bool is_max, bool columns) -> (Tensor, Tensor)");
  m.def("_atmo_select(Tensor dark, int k) -> Tensor");
  m.def("_dcp_gather_backward(Tensor grad, Tensor rows_a, Tensor cols_a, Tensor chan, int C, int patch) -> Tensor");
  m.def("dehaze_dcp(Tensor I, int patch, float omega, float top, int r, float eps, float t0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("_dcp_gather_backward", &dcp_gather_backward);
  m.impl("_dcp_window_tasks", &dcp_window_tasks);
  m.impl("_atmo_select", &atmo_select);
}

FD_PYTHON_MODULE(_C_dcp)
