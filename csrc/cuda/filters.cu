// CUDA kernels of the box and guided filters (SPEC section 2).
// Box filter: two passes, one thread per line with a float64 running sum (restarted per line,
// O(1) per pixel): the row pass writes row means to a float64 scratch, the column pass (threads
// on adjacent columns: coalesced) writes the box means. Non-finite values: counted in the
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

// One thread per line of length L (plan grid::box_rows: outer = plane o, line y < Q); element
// i of line (o, y) at o * PS + y * QS + i * es.
template <typename Tin, typename Tout>
__device__ __forceinline__ void box_line(const Tin* __restrict__ x, Tout* __restrict__ out, int64_t base, int64_t L,
                                         int64_t es, int64_t r, bool adjoint, bool normalise_out) {
  auto val = [&](int64_t i, int& bad) -> double {
    const double v = to_d(x[base + i * es]);
    bad = isfinite(v) ? 0 : 1;
    if (bad) return 0.0;
    return adjoint ? v / static_cast<double>(fm::box_count(i, L, r)) : v;
  };
  double acc = 0.0;
  int cnt = 0, bd;
  const int64_t e = r < L - 1 ? r : L - 1;
  for (int64_t i = 0; i <= e; ++i) {
    acc += val(i, bd);
    cnt += bd;
  }
  for (int64_t i = 0; i < L; ++i) {
    double o = normalise_out ? acc / static_cast<double>(fm::box_count(i, L, r)) : acc;
    if (cnt > 0) o = NAN;
    out[base + i * es] = static_cast<Tout>(o);
    if (i + r + 1 < L) {
      acc += val(i + r + 1, bd);
      cnt += bd;
    }
    if (i - r >= 0) {
      acc -= val(i - r, bd);
      cnt -= bd;
    }
  }
}

template <typename Tin, typename Tout>
__global__ void box_line_kernel(grid::Plan pl, const Tin* __restrict__ x, Tout* __restrict__ out, int64_t L, int64_t Q,
                                int64_t PS, int64_t QS, int64_t es, int64_t r, bool adjoint, bool normalise_out) {
  for (FD_UNITS(pl, u)) {
    const grid::Unit q = grid::unit_of(pl, u);
    const int64_t y = q.i * blockDim.x + threadIdx.x;
    if (y >= Q) continue;
    box_line<Tin, Tout>(x, out, q.o * PS + y * QS, L, es, r, adjoint, normalise_out);
  }
}

template <typename T>
__device__ __forceinline__ void put(T* p, double v) { store(p, static_cast<opmath<T>>(v)); }

// Column pass (plan grid::box_cols: outer = plane, threads on adjacent columns: coalesced).
template <typename T>
__device__ __forceinline__ void box_col(const double* __restrict__ x, T* __restrict__ out, int64_t base, int64_t H,
                                        int64_t W, int64_t r, bool adjoint) {
  double acc = 0.0;
  int cnt = 0;
  auto add = [&](int64_t i, double sg) {
    const double v = x[base + i * W];
    if (v != v) {
      cnt += sg > 0 ? 1 : -1;
    } else {
      acc += sg * (adjoint ? v / static_cast<double>(fm::box_count(i, H, r)) : v);
    }
  };
  const int64_t e = r < H - 1 ? r : H - 1;
  for (int64_t i = 0; i <= e; ++i) add(i, 1.0);
  for (int64_t i = 0; i < H; ++i) {
    double o = adjoint ? acc : acc / static_cast<double>(fm::box_count(i, H, r));
    if (cnt > 0) o = NAN;
    put(out + base + i * W, o);
    if (i + r + 1 < H) add(i + r + 1, 1.0);
    if (i - r >= 0) add(i - r, -1.0);
  }
}

template <typename T>
__global__ void box_col_kernel(grid::Plan pl, const double* __restrict__ x, T* __restrict__ out, int64_t H, int64_t W,
                               int64_t r, bool adjoint) {
  for (FD_UNITS(pl, u)) {
    const grid::Unit q = grid::unit_of(pl, u);
    const int64_t xx = q.i * blockDim.x + threadIdx.x;
    if (xx >= W) continue;
    box_col<T>(x, out, q.o * H * W + xx, H, W, r, adjoint);
  }
}

template <typename T, typename U>
void box_any(const T* x, U* out, double* tmp, int64_t P, int64_t H, int64_t W, int64_t r, bool adjoint,
             cudaStream_t stream) {
  // row pass -> float64 tmp; column pass -> out
  const grid::Plan prow = grid::box_rows(P, H), pcol = grid::box_cols(P, W);
  box_line_kernel<T, double><<<FD_GRID(prow), FD_BLOCK(prow), 0, stream>>>(prow, x, tmp, W, H, H * W, W, 1, r, adjoint,
                                                                           !adjoint);
  box_col_kernel<U><<<FD_GRID(pcol), FD_BLOCK(pcol), 0, stream>>>(pcol, tmp, out, H, W, r, adjoint);
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
