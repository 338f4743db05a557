// CUDA kernels of the dark channel prior ops (SPEC section 2).
// Window min/max: the van Herk / Gil-Werman running extremum of fastdehaze/dcp_math.h cut into
// independent tasks of one block of w = 2r+1 positions (dcp_math::window_task, int32
// positions): the channel extremum per pixel (chan_kernel), then one thread per (row, task),
// then one per (task, column) (adjacent columns on adjacent threads: coalesced); (value,
// position) pairs when the backward needs the winners. B*H*W/w threads per pass instead of B*H.
// atmospheric_light: one block per image, radix select on order keys (8-bit digits, shared
// histogram), then an index-ordered pass with a block scan for the ties and a fixed-order sum
// (deterministic). Launch plans: fastdehaze/grid.h (every grid 1-D, any B, H, W).
// Backward: a gather, not a scatter (col_adjoint_kernel, row_adjoint_kernel: each gradient
// element is one thread's sum over the window in a fixed order; deterministic, no atomics).
#include "dcp.cuh"
#include "fastdehaze/dcp_math.h"
#include "fastdehaze/grid.h"

namespace fastdehaze {
namespace {

namespace dm = dcp_math;

template <typename M, bool IS_MAX>
__device__ __forceinline__ M ident() {
  return IS_MAX ? -INFINITY : INFINITY;
}

// Channel extremum (scaled by 1 / max(A, 1e-6) for transmission) and its lowest channel.
template <typename T, bool IS_MAX, bool ARG>
__global__ void chan_kernel(grid::Plan pl, const T* __restrict__ I, const opmath<T>* __restrict__ A,
                            opmath<T>* __restrict__ pre, int32_t* __restrict__ chan, int64_t C, int64_t HW) {
  using M = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const int64_t i = u * blockDim.x + threadIdx.x;
    if (i >= pl.n) continue;
    const int64_t b = i / HW;
    const T* Ib = I + b * C * HW + (i - b * HW);
    M v = load(Ib);
    if (A) v *= dm::safe_inv_A(A[b * C]);
    int32_t bc = 0;
    for (int64_t c = 1; c < C; ++c) {
      M vc = load(Ib + c * HW);
      if (A) vc *= dm::safe_inv_A(A[b * C + c]);
      if (dm::better<IS_MAX>(vc, v)) {
        v = vc;
        bc = static_cast<int32_t>(c);
      }
    }
    pre[i] = v;
    if (ARG) chan[i] = bc;
  }
}

// Row pass: one thread per (row, task j) of dcp_math::window_task (tasks of a row on adjacent
// threads: a warp reads a few consecutive cache lines per step).
template <typename M, bool IS_MAX, bool ARG>
__global__ void rows_kernel(grid::Plan pl, const M* __restrict__ pre, M* hv, int32_t* ha, M* __restrict__ rows,
                            int32_t* __restrict__ rows_a, int32_t W, int32_t r, int32_t nt) {
  for (FD_UNITS(pl, u)) {
    const int64_t e = u * blockDim.x + threadIdx.x;
    if (e >= pl.n) continue;
    const int64_t line = e / nt, base = line * W;
    dm::window_task<IS_MAX, ARG, M>(pre + base, 1, W, r, static_cast<int32_t>(e - line * nt), hv + base,
                                    ARG ? ha + base : nullptr, rows + base, ARG ? rows_a + base : nullptr, false,
                                    M(0), ident<M, IS_MAX>());
  }
}

// Column pass: one thread per (image, task j, column x), adjacent threads on adjacent columns
// (coalesced); the h scratch is laid out like the image.
template <typename M, bool IS_MAX, bool ARG>
__global__ void cols_kernel(grid::Plan pl, const M* __restrict__ rows, M* hv, int32_t* ha, M* __restrict__ out,
                            int32_t* __restrict__ cols_a, int32_t H, int32_t W, int32_t r, int32_t nt, M omega,
                            bool post) {
  for (FD_UNITS(pl, u)) {
    const int64_t e = u * blockDim.x + threadIdx.x;
    if (e >= pl.n) continue;
    const int64_t x = e % W, bj = e / W, b = bj / nt, j = bj - b * nt;
    const int64_t base = b * static_cast<int64_t>(H) * W + x;
    dm::window_task<IS_MAX, ARG, M>(rows + base, W, H, r, static_cast<int32_t>(j), hv + base,
                                    ARG ? ha + base : nullptr, out + base, ARG ? cols_a + base : nullptr, post, omega,
                                    ident<M, IS_MAX>());
  }
}

template <typename T>
__global__ void cast_kernel(grid::Plan pl, const opmath<T>* src, T* dst, int64_t n) {
  for (FD_UNITS(pl, u)) {
    const int64_t i = u * blockDim.x + threadIdx.x;
    if (i < n) store(dst + i, src[i]);
  }
}

template <typename T>
struct GradAt {
  const T* g;
  __device__ __forceinline__ opmath<T> operator()(int64_t i) const { return load(g + i); }
};

// Backward, pass 1 (column adjoint, dcp_math::col_adjoint): g1[b, ys, x] (compute type).
template <typename T>
__global__ void col_adjoint_kernel(grid::Plan pl, const T* __restrict__ grad, const int32_t* __restrict__ cols_a,
                                   opmath<T>* __restrict__ g1, int64_t H, int64_t W, int64_t r) {
  const int64_t HW = H * W;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q = grid::unit_of(pl, u);  // q.o = image
    const int64_t i = q.i * blockDim.x + threadIdx.x;
    if (i >= HW) continue;
    const int64_t off = q.o * HW;
    g1[off + i] = dm::col_adjoint<opmath<T>>(GradAt<T>{grad + off}, cols_a + off, i / W, i % W, H, W, r);
  }
}

// Pass 2 (row adjoint, dcp_math::row_adjoint) and the channel: gI[b, c, ys, xs] (all channels written).
template <typename T>
__global__ void row_adjoint_kernel(grid::Plan pl, const opmath<T>* __restrict__ g1, const int32_t* __restrict__ rows_a,
                                   const int32_t* __restrict__ chan, T* __restrict__ gI, int64_t C, int64_t H,
                                   int64_t W, int64_t r) {
  using M = opmath<T>;
  const int64_t HW = H * W;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q = grid::unit_of(pl, u);
    const int64_t i = q.i * blockDim.x + threadIdx.x;
    if (i >= HW) continue;
    const int64_t off = q.o * HW, ys = i / W, xs = i % W;
    const M v = dm::row_adjoint<M>(g1 + off + ys * W, rows_a + off + ys * W, xs, W, r);
    const int32_t cs = chan[off + i];
    for (int64_t c = 0; c < C; ++c) store(gI + (q.o * C + c) * HW + i, c == cs ? v : M(0));
  }
}

// One block per image (plan grid::dcp_atmo). The sum of the k selected pixels per channel is
// deterministic: each thread adds its own picks in index order (registers, kAtmoCh channels
// per pass over the image), then the fixed-shape block tree of block_sum.
constexpr int kAtmoCh = 4;

template <typename T>
__global__ void atmo_kernel(grid::Plan pl, const T* __restrict__ I, const T* __restrict__ dark, opmath<T>* A, int64_t C,
                            int64_t HW, int64_t k) {
  using M = opmath<T>;
  using K = typename dm::KeyOf<M>::type;
  __shared__ unsigned int hist[256];
  __shared__ K s_prefix;
  __shared__ long long s_kk;
  __shared__ int warp_cnt[32];
  __shared__ long long s_base;
  for (FD_UNITS(pl, b)) {
    __syncthreads();  // shared state of the previous image
    const T* d = dark + b * HW;
    K prefix = 0, mask = 0;
    long long kk = k;
    for (int shift = static_cast<int>(sizeof(K) * 8) - 8; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
      __syncthreads();
      // warp-aggregated: the lanes with one digit add their count once (the keys of [0, 1]
      // values fall in a few bins, so per-lane shared atomics would serialise 32-way)
      for (int64_t start = 0; start < HW; start += blockDim.x) {
        const int64_t i = start + threadIdx.x;
        int bin = 256;  // none
        if (i < HW) {
          const K key = dm::order_key(static_cast<M>(load(d + i)));
          if ((key & mask) == prefix) bin = static_cast<int>((key >> shift) & 0xFF);
        }
        const unsigned peers = __match_any_sync(0xffffffffu, bin);
        if (bin < 256 && (threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        long long cum = 0;
        int dg = 255;
        for (; dg > 0; --dg) {
          if (cum + hist[dg] >= kk) break;
          cum += hist[dg];
        }
        s_kk = kk - cum;
        s_prefix = prefix | (static_cast<K>(dg) << shift);
      }
      __syncthreads();
      prefix = s_prefix;
      kk = s_kk;
      mask |= static_cast<K>(0xFF) << shift;
      __syncthreads();
    }
    const K thr = prefix;
    const long long need = kk;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int64_t c0 = 0; c0 < C; c0 += kAtmoCh) {
      M acc[kAtmoCh];
#pragma unroll
      for (int j = 0; j < kAtmoCh; ++j) acc[j] = M(0);
      if (threadIdx.x == 0) s_base = 0;
      __syncthreads();
      for (int64_t start = 0; start < HW; start += blockDim.x) {
        const int64_t i = start + threadIdx.x;
        K key = 0;
        bool eq = false;
        if (i < HW) {
          key = dm::order_key(static_cast<M>(load(d + i)));
          eq = key == thr;
        }
        const unsigned bal = __ballot_sync(0xffffffffu, eq);
        if (lane == 0) warp_cnt[warp] = __popc(bal);
        __syncthreads();
        long long before = s_base;
        for (int wi = 0; wi < warp; ++wi) before += warp_cnt[wi];
        before += __popc(bal & ((1u << lane) - 1u));
        const bool take = i < HW && (key > thr || (eq && before < need));
        if (take) {
#pragma unroll
          for (int j = 0; j < kAtmoCh; ++j)
            if (c0 + j < C) acc[j] += static_cast<M>(load(I + (b * C + c0 + j) * HW + i));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          long long tot = 0;
          for (int wi = 0; wi < nw; ++wi) tot += warp_cnt[wi];
          s_base += tot;
        }
        __syncthreads();
      }
#pragma unroll
      for (int j = 0; j < kAtmoCh; ++j) {
        const M sj = block_sum(acc[j]);
        if (threadIdx.x == 0 && c0 + j < C) A[b * C + c0 + j] = sj / static_cast<M>(k);
      }
    }
  }
}


}  // namespace

template <typename T>
void channel_window_cuda_launch(const T* I, const opmath<T>* A, double omega, bool is_max, int64_t B, int64_t C,
                                int64_t H, int64_t W, int64_t patch, opmath<T>* pre, opmath<T>* rows, opmath<T>* hv,
                                int32_t* ha, int32_t* rows_a, int32_t* cols_a, int32_t* chan, void* out, bool out_is_T,
                                cudaStream_t stream) {
  using M = opmath<T>;
  if (B == 0 || H == 0 || W == 0) return;
  // r >= max(H, W) - 1 is a whole-line window: clamp (keeps w = 2r+1 in int32)
  const int64_t r = patch / 2 < (H > W ? H : W) ? patch / 2 : (H > W ? H : W);
  const bool arg = rows_a != nullptr;
  const M om = static_cast<M>(omega);
  const bool post = A != nullptr;
  // the column pass writes compute-type values into `pre` (free by then), cast afterwards when out is T
  M* col_out = out_is_T ? pre : static_cast<M*>(out);
  const int32_t Hi = static_cast<int32_t>(H), Wi = static_cast<int32_t>(W), ri = static_cast<int32_t>(r);
  const int32_t ntW = dm::line_tasks(Wi, ri), ntH = dm::line_tasks(Hi, ri);
  const grid::Plan pch = grid::flat(B * H * W), prow = grid::flat(B * H * ntW), pcol = grid::flat(B * ntH * W);
#define FD_LINES(MX, AR)                                                                                          \
  chan_kernel<T, MX, AR><<<FD_GRID(pch), FD_BLOCK(pch), 0, stream>>>(pch, I, A, pre, chan, C, H * W);              \
  rows_kernel<M, MX, AR><<<FD_GRID(prow), FD_BLOCK(prow), 0, stream>>>(prow, pre, hv, ha, rows, rows_a, Wi, ri,     \
                                                                       ntW);                                      \
  cols_kernel<M, MX, AR><<<FD_GRID(pcol), FD_BLOCK(pcol), 0, stream>>>(pcol, rows, hv, ha, col_out, cols_a, Hi, Wi, \
                                                                       ri, ntH, om, post);
  if (is_max) {
    if (arg) { FD_LINES(true, true) } else { FD_LINES(true, false) }
  } else {
    if (arg) { FD_LINES(false, true) } else { FD_LINES(false, false) }
  }
#undef FD_LINES
  if (out_is_T) {
    const grid::Plan pc = grid::flat(B * H * W);
    cast_kernel<T><<<FD_GRID(pc), FD_BLOCK(pc), 0, stream>>>(pc, pre, static_cast<T*>(out), B * H * W);
  }
}

template <typename T>
void channel_scatter_cuda_launch(const T* grad, const int32_t* rows_a, const int32_t* cols_a, const int32_t* chan,
                                 opmath<T>* acc, T* gI, int64_t B, int64_t C, int64_t H, int64_t W, int64_t patch,
                                 cudaStream_t stream) {
  if (B == 0 || H == 0 || W == 0) return;
  const int64_t r = patch / 2;
  const grid::Plan pp = grid::plane_pixels(B, H * W);
  col_adjoint_kernel<T><<<FD_GRID(pp), FD_BLOCK(pp), 0, stream>>>(pp, grad, cols_a, acc, H, W, r);
  row_adjoint_kernel<T><<<FD_GRID(pp), FD_BLOCK(pp), 0, stream>>>(pp, acc, rows_a, chan, gI, C, H, W, r);
}

template <typename T>
void atmospheric_light_cuda_launch(const T* I, const T* dark, opmath<T>* A, int64_t B, int64_t C, int64_t HW,
                                   int64_t k, cudaStream_t stream) {
  if (B == 0 || HW == 0) return;
  const grid::Plan pl = grid::dcp_atmo(B);
  atmo_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, I, dark, A, C, HW, k < HW ? k : HW);
}

#define FD_INSTANTIATE(T)                                                                                            \
  template void channel_window_cuda_launch<T>(const T*, const opmath<T>*, double, bool, int64_t, int64_t, int64_t,   \
                                              int64_t, int64_t, opmath<T>*, opmath<T>*, opmath<T>*, int32_t*,        \
                                              int32_t*, int32_t*, int32_t*, void*, bool, cudaStream_t);              \
  template void channel_scatter_cuda_launch<T>(const T*, const int32_t*, const int32_t*, const int32_t*, opmath<T>*, \
                                               T*, int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);       \
  template void atmospheric_light_cuda_launch<T>(const T*, const T*, opmath<T>*, int64_t, int64_t, int64_t, int64_t, \
                                                 cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
