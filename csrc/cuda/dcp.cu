// CUDA kernels of the dark channel prior ops (SPEC section 2).
// Window min/max: the van Herk / Gil-Werman running extremum of fastdehaze/dcp_math.h cut into
// independent tasks of one block of w = 2r+1 positions (dcp_math::window_task, int32
// positions): the channel extremum per pixel (chan_kernel), then one thread per (row, task),
// then one per (task, column) (adjacent columns on adjacent threads: coalesced); (value,
// position) pairs when the backward needs the winners. B*H*W/w threads per pass instead of B*H.
// atmospheric_light: a multi-block radix select on order keys (8-bit digits, chunk histograms
// merged with integer atomics), then the ties ranked by flat index through chunk offsets and
// fixed-order sums (deterministic; see atmo_hist_kernel). Launch plans: fastdehaze/grid.h (every grid 1-D, any B, H, W).
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

// Multi-block top-k select (deterministic; dcp_math::select_digit): per 8-bit digit (4 for
// float keys, 8 for double), atmo_hist_kernel builds each chunk's histogram of the keys under
// the current prefix in shared memory (warp-aggregated adds) and adds it to the image's global
// histogram (integer atomics: exact, order-free), then atmo_digit_kernel picks the digit. Then
// the keys equal to the threshold are ranked by flat index: atmo_count_kernel counts them per
// chunk, atmo_scan_kernel turns the counts into chunk offsets, and atmo_take_kernel ranks within
// its chunk (ballots) and writes the chunk's per-channel sum of the taken pixels (thread order,
// then the block tree); atmo_final_kernel sums the chunks in order and divides by k.
// state[b] = (prefix, kk); hist [B, 256]; cnt [B, chunks]; part [B*C, chunks].
constexpr int kAtmoCh = 4;

template <typename T>
__global__ void atmo_hist_kernel(grid::Plan pl, const T* __restrict__ dark, const long long* __restrict__ state,
                                 unsigned int* __restrict__ hist, int64_t HW, int shift, bool first) {
  using M = opmath<T>;
  using K = typename dm::KeyOf<M>::type;
  __shared__ unsigned int sh[256];
  for (FD_UNITS(pl, u)) {
    const grid::Unit q = grid::unit_of(pl, u);
    const K prefix = first ? K(0) : static_cast<K>(state[2 * q.o]);
    const K mask = shift + 8 >= static_cast<int>(sizeof(K) * 8) ? K(0) : ~K(0) << (shift + 8);
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sh[i] = 0;
    __syncthreads();
    const int64_t i0 = q.i * dm::kAtmoChunk, i1 = i0 + dm::kAtmoChunk < HW ? i0 + dm::kAtmoChunk : HW;
    for (int64_t start = i0; start < i1; start += blockDim.x) {
      const int64_t i = start + threadIdx.x;
      int bin = 256;
      if (i < i1) {
        const K key = dm::order_key(static_cast<M>(load(dark + q.o * HW + i)));
        if ((key & mask) == prefix) bin = static_cast<int>((key >> shift) & 0xFF);
      }
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin < 256 && (threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&sh[bin], static_cast<unsigned>(__popc(peers)));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
      if (sh[i]) atomicAdd(hist + q.o * 256 + i, sh[i]);  // integer: exact
  }
}

template <typename T>
__global__ void atmo_digit_kernel(grid::Plan pl, long long* __restrict__ state, unsigned int* __restrict__ hist,
                                  int shift, bool first, long long k) {
  using K = typename dm::KeyOf<opmath<T>>::type;
  for (FD_UNITS(pl, b)) {
    if (threadIdx.x == 0) {
      long long kk = first ? k : state[2 * b + 1];
      const K prefix = first ? K(0) : static_cast<K>(state[2 * b]);
      const int dg = dm::select_digit(hist + b * 256, kk);
      state[2 * b] = static_cast<long long>(prefix | (static_cast<K>(dg) << shift));
      state[2 * b + 1] = kk;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[b * 256 + i] = 0;  // for the next digit
  }
}

template <typename T>
__global__ void atmo_count_kernel(grid::Plan pl, const T* __restrict__ dark, const long long* __restrict__ state,
                                  long long* __restrict__ cnt, int64_t HW) {
  using M = opmath<T>;
  using K = typename dm::KeyOf<M>::type;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q = grid::unit_of(pl, u);
    const K thr = static_cast<K>(state[2 * q.o]);
    const int64_t i0 = q.i * dm::kAtmoChunk, i1 = i0 + dm::kAtmoChunk < HW ? i0 + dm::kAtmoChunk : HW;
    long long c = 0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
      c += dm::order_key(static_cast<M>(load(dark + q.o * HW + i))) == thr ? 1 : 0;
    c = block_sum(c);
    if (threadIdx.x == 0) cnt[u] = c;
  }
}

__global__ void atmo_scan_kernel(grid::Plan pl, long long* __restrict__ cnt, int64_t nchunk) {
  for (FD_UNITS(pl, b)) {
    if (threadIdx.x == 0) {
      long long run = 0;
      for (int64_t j = 0; j < nchunk; ++j) {
        const long long c = cnt[b * nchunk + j];
        cnt[b * nchunk + j] = run;
        run += c;
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(1024) atmo_take_kernel(grid::Plan pl, const T* __restrict__ I, const T* __restrict__ dark,
                                 const long long* __restrict__ state, const long long* __restrict__ off,
                                 opmath<T>* __restrict__ part, int64_t C, int64_t HW) {
  using M = opmath<T>;
  using K = typename dm::KeyOf<M>::type;
  __shared__ int warp_cnt[32];
  __shared__ long long s_base;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q = grid::unit_of(pl, u);
    const int64_t b = q.o, nchunk = pl.inner;
    const K thr = static_cast<K>(state[2 * b]);
    const long long need = state[2 * b + 1];
    const int64_t i0 = q.i * dm::kAtmoChunk, i1 = i0 + dm::kAtmoChunk < HW ? i0 + dm::kAtmoChunk : HW;
    for (int64_t c0 = 0; c0 < C; c0 += kAtmoCh) {
      M acc[kAtmoCh];
#pragma unroll
      for (int j = 0; j < kAtmoCh; ++j) acc[j] = M(0);
      __syncthreads();
      if (threadIdx.x == 0) s_base = off[u];
      __syncthreads();
      for (int64_t start = i0; start < i1; start += blockDim.x) {
        const int64_t i = start + threadIdx.x;
        K key = 0;
        bool eq = false;
        if (i < i1) {
          key = dm::order_key(static_cast<M>(load(dark + b * HW + i)));
          eq = key == thr;
        }
        const unsigned bal = __ballot_sync(0xffffffffu, eq);
        if (lane == 0) warp_cnt[warp] = __popc(bal);
        __syncthreads();
        long long before = s_base;
        for (int wi = 0; wi < warp; ++wi) before += warp_cnt[wi];
        before += __popc(bal & ((1u << lane) - 1u));
        if (i < i1 && (key > thr || (eq && before < need))) {
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
        if (threadIdx.x == 0 && c0 + j < C) part[(b * C + c0 + j) * nchunk + q.i] = sj;
      }
    }
  }
}

template <typename M>
__global__ void atmo_final_kernel(grid::Plan pl, const M* __restrict__ part, M* __restrict__ A, int64_t nchunk,
                                  long long k) {
  for (FD_UNITS(pl, u)) {
    M s = 0;
    for (int64_t j = threadIdx.x; j < nchunk; j += blockDim.x) s += part[u * nchunk + j];
    s = block_sum(s);
    if (threadIdx.x == 0) A[u] = s / static_cast<M>(k);
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

int64_t atmospheric_light_workspace_bytes(int64_t B, int64_t C, int64_t HW) {
  const int64_t nchunk = grid::dcp_atmo_chunks(B, HW).inner;
  return 8 * (2 * B + B * nchunk + B * C * nchunk) + 4 * 256 * B;
}

template <typename T>
void atmospheric_light_cuda_launch(const T* I, const T* dark, opmath<T>* A, int64_t B, int64_t C, int64_t HW,
                                   int64_t k, void* work, cudaStream_t stream) {
  using M = opmath<T>;
  using K = typename dm::KeyOf<M>::type;
  if (B == 0 || HW == 0) return;
  const long long kk = k < HW ? k : HW;
  const grid::Plan pch = grid::dcp_atmo_chunks(B, HW), pim = grid::dcp_atmo(B), pbc = grid::param_reduce(B * C);
  const int64_t nchunk = pch.inner;
  // workspace (zero-filled by the caller): state [B,2] | cnt [B,nchunk] | part [B*C,nchunk] (8-byte) | hist [B,256]
  long long* state = static_cast<long long*>(work);
  long long* cnt = state + 2 * B;
  M* part = reinterpret_cast<M*>(cnt + B * nchunk);
  unsigned int* hist = reinterpret_cast<unsigned int*>(reinterpret_cast<char*>(part) + 8 * B * C * nchunk);
  for (int shift = static_cast<int>(sizeof(K) * 8) - 8; shift >= 0; shift -= 8) {
    const bool first = shift == static_cast<int>(sizeof(K) * 8) - 8;
    atmo_hist_kernel<T><<<FD_GRID(pch), FD_BLOCK(pch), 0, stream>>>(pch, dark, state, hist, HW, shift, first);
    atmo_digit_kernel<T><<<FD_GRID(pim), FD_BLOCK(pim), 0, stream>>>(pim, state, hist, shift, first, kk);
  }
  atmo_count_kernel<T><<<FD_GRID(pch), FD_BLOCK(pch), 0, stream>>>(pch, dark, state, cnt, HW);
  const grid::Plan psc = grid::blocks(B, 1, 32);
  atmo_scan_kernel<<<FD_GRID(psc), FD_BLOCK(psc), 0, stream>>>(psc, cnt, nchunk);
  const grid::Plan ptk = grid::blocks(B, nchunk, 1024);
  atmo_take_kernel<T><<<FD_GRID(ptk), FD_BLOCK(ptk), 0, stream>>>(ptk, I, dark, state, cnt, part, C, HW);
  atmo_final_kernel<M><<<FD_GRID(pbc), FD_BLOCK(pbc), 0, stream>>>(pbc, part, A, nchunk, kk);
}

#define FD_INSTANTIATE(T)                                                                                            \
  template void channel_window_cuda_launch<T>(const T*, const opmath<T>*, double, bool, int64_t, int64_t, int64_t,   \
                                              int64_t, int64_t, opmath<T>*, opmath<T>*, opmath<T>*, int32_t*,        \
                                              int32_t*, int32_t*, int32_t*, void*, bool, cudaStream_t);              \
  template void channel_scatter_cuda_launch<T>(const T*, const int32_t*, const int32_t*, const int32_t*, opmath<T>*, \
                                               T*, int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);       \
  template void atmospheric_light_cuda_launch<T>(const T*, const T*, opmath<T>*, int64_t, int64_t, int64_t, int64_t, \
                                                 void*, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
