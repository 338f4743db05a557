// CUDA kernels of the box and guided filters (SPEC section 2).
// Box filter: two passes of filters_math::box_task, one thread per (line, task of
// max(2r+1, 16) outputs) with a float64 running sum restarted per task (O(1) per pixel): the
// row pass writes row means to a float64 scratch, the column pass (threads on adjacent columns:
// coalesced) writes the box means. Non-finite values: counted in the
// window, NaN output where the count is > 0 (same rule as the reference and the CPU kernel).
// Guided filter: stats kernel (I, p, Ip, II ... per pixel) -> box of all stats planes ->
// coefficient kernel (filters_math.h, shared with the CPU) -> box of a, b -> output kernel.
#include "filters.cuh"
#include "fastdehaze/filters_math.h"
#include "fastdehaze/grid.h"

namespace fastdehaze {
namespace {

namespace fm = filters_math;

__device__ __forceinline__ double to_d(double v) { return v; }
template <typename T>
__device__ __forceinline__ double to_d(T v) { return static_cast<double>(load(&v)); }

// Row pass: one thread per (line, task) of filters_math::box_task (tasks of a line on adjacent
// threads); line l = (o, y) starts at o * PS + y * QS (y < Q), element i at + i * es. Inputs
// that are not finite count as bad; the double results go to the row scratch.
template <typename Tin>
struct RowGet {
  const Tin* x;
  int64_t es;
  __device__ __forceinline__ double operator()(int64_t i, int& bad) const {
    const double v = to_d(x[i * es]);
    bad = isfinite(v) ? 0 : 1;
    return v;
  }
};
template <typename Tout>
struct RowPut {
  Tout* out;
  int64_t es;
  __device__ __forceinline__ void operator()(int64_t i, double v) const { out[i * es] = static_cast<Tout>(v); }
};

template <typename Tin, typename Tout>
__global__ void box_line_kernel(grid::Plan pl, const Tin* __restrict__ x, Tout* __restrict__ out, int64_t L, int64_t Q,
                                int64_t PS, int64_t QS, int64_t es, int64_t r, int64_t nt, bool adjoint) {
  for (FD_UNITS(pl, u)) {
    const int64_t e = u * blockDim.x + threadIdx.x;
    if (e >= pl.n) continue;
    const int64_t line = e / nt, j = e - line * nt;
    const int64_t base = (line / Q) * PS + (line % Q) * QS;
    fm::box_task(RowGet<Tin>{x + base, es}, RowPut<Tout>{out + base, es}, L, r, j, adjoint);
  }
}

// Column pass: one thread per (plane, task, column), adjacent threads on adjacent columns
// (coalesced). Its input is the row pass's double scratch, where NaN marks a bad window.
struct ColGet {
  const double* x;
  int64_t W;
  __device__ __forceinline__ double operator()(int64_t i, int& bad) const {
    const double v = x[i * W];
    bad = v != v ? 1 : 0;
    return v;
  }
};
template <typename T>
struct ColPut {
  T* out;
  int64_t W;
  __device__ __forceinline__ void operator()(int64_t i, double v) const {
    store(out + i * W, static_cast<opmath<T>>(v));
  }
};

template <typename T>
__global__ void box_col_kernel(grid::Plan pl, const double* __restrict__ x, T* __restrict__ out, int64_t H, int64_t W,
                               int64_t r, int64_t nt, bool adjoint) {
  for (FD_UNITS(pl, u)) {
    const int64_t e = u * blockDim.x + threadIdx.x;
    if (e >= pl.n) continue;
    const int64_t xx = e % W, pj = e / W, p = pj / nt, j = pj - p * nt;
    const int64_t base = p * H * W + xx;
    fm::box_task(ColGet{x + base, W}, ColPut<T>{out + base, W}, H, r, j, adjoint);
  }
}

template <typename T, typename U>
void box_any(const T* x, U* out, double* tmp, int64_t P, int64_t H, int64_t W, int64_t r, bool adjoint,
             cudaStream_t stream) {
  // row pass -> float64 tmp; column pass -> out
  const int64_t ntW = fm::box_tasks(W, r), ntH = fm::box_tasks(H, r);
  const grid::Plan prow = grid::box_rows(P * H, ntW), pcol = grid::box_cols(P * ntH, W);
  box_line_kernel<T, double><<<FD_GRID(prow), FD_BLOCK(prow), 0, stream>>>(prow, x, tmp, W, H, H * W, W, 1, r, ntW,
                                                                           adjoint);
  box_col_kernel<U><<<FD_GRID(pcol), FD_BLOCK(pcol), 0, stream>>>(pcol, tmp, out, H, W, r, ntH, adjoint);
}

template <typename T>
__global__ void gf_stats_kernel(grid::Plan pl, const T* __restrict__ I, const T* __restrict__ p, opmath<T>* __restrict__ st, int64_t C,
                                int64_t G, int64_t HW, int64_t K) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o / C, c = un.o % C;
    const int64_t i = un.i * blockDim.x + threadIdx.x;
    if (i >= HW) continue;
    const op_t pv = load(p + (b * C + c) * HW + i);
    op_t* s = st + (b * C + c) * K * HW + i;
    if (G == 1) {
      const op_t iv = load(I + b * HW + i);
      s[0] = iv, s[HW] = pv, s[2 * HW] = iv * pv, s[3 * HW] = iv * iv;
    } else {
      const op_t i0 = load(I + b * 3 * HW + i), i1 = load(I + (b * 3 + 1) * HW + i), i2 = load(I + (b * 3 + 2) * HW + i);
      const op_t v[13] = {i0, i1, i2, i0 * i0, i0 * i1, i0 * i2, i1 * i1, i1 * i2, i2 * i2, pv, i0 * pv, i1 * pv, i2 * pv};
      for (int k = 0; k < 13; ++k) s[k * HW] = v[k];
    }
  }
}

template <typename T>
__global__ void gf_coeff_kernel(grid::Plan pl, const opmath<T>* __restrict__ m, opmath<T>* __restrict__ ab, int64_t G, int64_t HW,
                                int64_t K, int64_t KA, opmath<T> eps) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);  // un.o = b * C + c
    const int64_t i = un.i * blockDim.x + threadIdx.x;
    if (i >= HW) continue;
    const op_t* s = m + un.o * K * HW + i;
    op_t* o = ab + un.o * KA * HW + i;
    if (G == 1) {
      op_t a, b;
      fm::gray_coeffs(s[0], s[HW], s[2 * HW], s[3 * HW], eps, a, b);
      o[0] = a, o[HW] = b;
    } else {
      op_t v[13], a[3], b;
      for (int k = 0; k < 13; ++k) v[k] = s[k * HW];
      fm::color_coeffs(v, v[9], v + 10, v + 3, eps, a, b);
      o[0] = a[0], o[HW] = a[1], o[2 * HW] = a[2], o[3 * HW] = b;
    }
  }
}

template <typename T>
__global__ void gf_out_kernel(grid::Plan pl, const T* __restrict__ I, const opmath<T>* __restrict__ mab, T* __restrict__ q, int64_t C,
                              int64_t G, int64_t HW, int64_t KA) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o / C, c = un.o % C;
    const int64_t i = un.i * blockDim.x + threadIdx.x;
    if (i >= HW) continue;
    const op_t* s = mab + (b * C + c) * KA * HW + i;
    op_t v = s[(KA - 1) * HW];
    for (int64_t g = 0; g < G; ++g) v += s[g * HW] * load(I + (b * G + g) * HW + i);
    store(q + (b * C + c) * HW + i, v);
  }
}

}  // namespace

template <typename T>
void box_filter_cuda_launch(const T* x, T* out, double* tmp, int64_t P, int64_t H, int64_t W, int64_t r, bool adjoint,
                            cudaStream_t stream) {
  if (P == 0 || H == 0 || W == 0) return;
  box_any<T, T>(x, out, tmp, P, H, W, r, adjoint, stream);
}

template <typename T>
void guided_filter_cuda_launch(const T* I, const T* p, T* q, opmath<T>* stats, opmath<T>* ab, double* tmp, int64_t B,
                               int64_t C, int64_t G, int64_t H, int64_t W, int64_t r, double eps, cudaStream_t stream) {
  using op_t = opmath<T>;
  const int64_t HW = H * W, K = G == 1 ? 4 : 13, KA = G == 1 ? 2 : 4;
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan g3 = grid::plane_pixels(B * C, HW);
  gf_stats_kernel<T><<<FD_GRID(g3), FD_BLOCK(g3), 0, stream>>>(g3, I, p, stats, C, G, HW, K);
  box_any<op_t, op_t>(stats, stats, tmp, B * C * K, H, W, r, false, stream);  // in place: row pass goes to tmp first
  gf_coeff_kernel<T><<<FD_GRID(g3), FD_BLOCK(g3), 0, stream>>>(g3, stats, ab, G, HW, K, KA, static_cast<op_t>(eps));
  box_any<op_t, op_t>(ab, ab, tmp, B * C * KA, H, W, r, false, stream);
  gf_out_kernel<T><<<FD_GRID(g3), FD_BLOCK(g3), 0, stream>>>(g3, I, ab, q, C, G, HW, KA);
}

#define FD_INSTANTIATE(T)                                                                                        \
  template void box_filter_cuda_launch<T>(const T*, T*, double*, int64_t, int64_t, int64_t, int64_t, bool,       \
                                          cudaStream_t);                                                        \
  template void guided_filter_cuda_launch<T>(const T*, const T*, T*, opmath<T>*, opmath<T>*, double*, int64_t,   \
                                             int64_t, int64_t, int64_t, int64_t, int64_t, double, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
