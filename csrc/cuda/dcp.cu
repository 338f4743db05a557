// CUDA kernels of the dark channel prior ops (SPEC section 2).
// Window min/max: the van Herk / Gil-Werman running extremum of fastdehaze/dcp_math.h, one
// thread per line: first along the rows (the channel extremum formed on the way), then down the
// columns (coalesced); (value, position) pairs when the backward needs the winners.
// atmospheric_light: one block per image, radix select on order keys (8-bit digits, shared
// histogram), then an index-ordered pass with a block scan for the ties.
#include "dcp.cuh"
#include "fastdehaze/dcp_math.h"

namespace fastdehaze {
namespace {

namespace dm = dcp_math;
constexpr int kThreads = 128;

template <typename M, bool IS_MAX>
__device__ __forceinline__ M ident() {
  return IS_MAX ? -INFINITY : INFINITY;
}

// One line: vals[base + p*stride], p < n -> out (value, optional position).
template <typename M, bool IS_MAX, bool ARG>
__device__ void run_line(const M* vals, int64_t base, int64_t stride, int64_t n, int64_t r, M* hv, int32_t* ha,
                         int64_t hbase, M* ov, int32_t* oa, int64_t obase, M omega, bool post) {
  const int64_t w = 2 * r + 1;
  M h = ident<M, IS_MAX>();
  int32_t hpos = 0;
  for (int64_t p = n - 1; p >= 0; --p) {
    const M v = vals[base + p * stride];
    const bool is_end = (p % w == w - 1) || (p == n - 1);
    if (is_end || !dm::better<IS_MAX>(h, v)) {
      h = v;
      hpos = static_cast<int32_t>(p);
    }
    hv[hbase + p] = h;
    if (ARG) ha[hbase + p] = hpos;
  }
  M g = ident<M, IS_MAX>();
  int32_t gpos = 0;
  for (int64_t p = 0; p < n + r; ++p) {
    if (p < n) {
      const M v = vals[base + p * stride];
      if (p % w == 0 || dm::better<IS_MAX>(v, g)) {
        g = v;
        gpos = static_cast<int32_t>(p);
      }
    }
    const int64_t x = p - r;
    if (x < 0) continue;
    const int64_t lo = dm::win_lo(x, r), hi = dm::win_hi(x, r, n);
    const M hl = hv[hbase + lo];
    const bool same = lo / w == hi / w;
    const bool use_g = same ? (lo % w == 0) : dm::better<IS_MAX>(g, hl);
    M o = use_g ? g : hl;
    if (post) o = dm::transmission(o, omega);
    ov[obase + x * stride] = o;
    if (ARG) oa[obase + x * stride] = use_g ? gpos : ha[hbase + lo];
  }
}

template <typename T, bool IS_MAX, bool ARG>
__global__ void rows_kernel(const T* __restrict__ I, const opmath<T>* __restrict__ A, opmath<T>* pre, int32_t* chan,
                            opmath<T>* hv, int32_t* ha, opmath<T>* rows, int32_t* rows_a, int64_t B, int64_t C,
                            int64_t H, int64_t W, int64_t r) {
  using M = opmath<T>;
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (lane >= B * H) return;
  const int64_t b = lane / H, y = lane % H, HW = H * W;
  const T* Ib = I + b * C * HW + y * W;
  for (int64_t x = 0; x < W; ++x) {
    M v = load(Ib + x);
    if (A) v *= dm::safe_inv_A(A[b * C]);
    int32_t bc = 0;
    for (int64_t c = 1; c < C; ++c) {
      M vc = load(Ib + c * HW + x);
      if (A) vc *= dm::safe_inv_A(A[b * C + c]);
      if (dm::better<IS_MAX>(vc, v)) {
        v = vc;
        bc = static_cast<int32_t>(c);
      }
    }
    pre[lane * W + x] = v;
    if (ARG) chan[lane * W + x] = bc;
  }
  run_line<M, IS_MAX, ARG>(pre, lane * W, 1, W, r, hv, ha, lane * W, rows, rows_a, lane * W, M(0), false);
}

// Column pass: the same algorithm with the h scratch laid out like the image (coalesced across lanes).
template <typename M, bool IS_MAX, bool ARG>
__global__ void cols_kernel_strided(const M* rows, M* hv, int32_t* ha, M* out, int32_t* cols_a, int64_t B, int64_t H,
                                    int64_t W, int64_t r, M omega, bool post) {
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (lane >= B * W) return;
  const int64_t base = (lane / W) * H * W + lane % W;
  const int64_t w = 2 * r + 1;
  M h = ident<M, IS_MAX>();
  int32_t hpos = 0;
  for (int64_t p = H - 1; p >= 0; --p) {
    const M v = rows[base + p * W];
    if ((p % w == w - 1) || (p == H - 1) || !dm::better<IS_MAX>(h, v)) {
      h = v;
      hpos = static_cast<int32_t>(p);
    }
    hv[base + p * W] = h;
    if (ARG) ha[base + p * W] = hpos;
  }
  M g = ident<M, IS_MAX>();
  int32_t gpos = 0;
  for (int64_t p = 0; p < H + r; ++p) {
    if (p < H) {
      const M v = rows[base + p * W];
      if (p % w == 0 || dm::better<IS_MAX>(v, g)) {
        g = v;
        gpos = static_cast<int32_t>(p);
      }
    }
    const int64_t y = p - r;
    if (y < 0) continue;
    const int64_t lo = dm::win_lo(y, r), hi = dm::win_hi(y, r, H);
    const M hl = hv[base + lo * W];
    const bool use_g = (lo / w == hi / w) ? (lo % w == 0) : dm::better<IS_MAX>(g, hl);
    M o = use_g ? g : hl;
    if (post) o = dm::transmission(o, omega);
    out[base + y * W] = o;
    if (ARG) cols_a[base + y * W] = use_g ? gpos : ha[base + lo * W];
  }
}

template <typename T>
__global__ void cast_kernel(const opmath<T>* src, T* dst, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) store(dst + i, src[i]);
}

template <typename T>
__global__ void scatter_kernel(const T* grad, const int32_t* rows_a, const int32_t* cols_a, const int32_t* chan,
                               opmath<T>* acc, int64_t B, int64_t C, int64_t H, int64_t W) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t HW = H * W;
  if (i >= B * HW) return;
  const int64_t b = i / HW, x = (i % HW) % W;
  const int64_t ys = cols_a[i];
  const int64_t xs = rows_a[b * HW + ys * W + x];
  const int64_t cs = chan[b * HW + ys * W + xs];
  atomicAdd(acc + (b * C + cs) * HW + ys * W + xs, load(grad + i));
}

template <typename T>
__global__ void atmo_kernel(const T* __restrict__ I, const T* __restrict__ dark, opmath<T>* A, int64_t C, int64_t HW,
                            int64_t k) {
  using M = opmath<T>;
  using K = typename dm::KeyOf<M>::type;
  __shared__ unsigned int hist[256];
  __shared__ K s_prefix;
  __shared__ long long s_kk;
  __shared__ int warp_cnt[32];
  __shared__ long long s_base;
  const int64_t b = blockIdx.x;
  const T* d = dark + b * HW;
  K prefix = 0, mask = 0;
  long long kk = k;
  for (int shift = static_cast<int>(sizeof(K) * 8) - 8; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
      const K key = dm::order_key(static_cast<M>(load(d + i)));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFF], 1u);
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
  if (threadIdx.x == 0) s_base = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
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
    if (take)
      for (int64_t c = 0; c < C; ++c) atomicAdd(A + b * C + c, static_cast<M>(load(I + (b * C + c) * HW + i)));
    __syncthreads();
    if (threadIdx.x == 0) {
      long long tot = 0;
      for (int wi = 0; wi < nw; ++wi) tot += warp_cnt[wi];
      s_base += tot;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int64_t c = 0; c < C; ++c) A[b * C + c] /= static_cast<M>(k);
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

template <typename T>
void channel_window_cuda_launch(const T* I, const opmath<T>* A, double omega, bool is_max, int64_t B, int64_t C,
                                int64_t H, int64_t W, int64_t patch, opmath<T>* pre, opmath<T>* rows, opmath<T>* hv,
                                int32_t* ha, int32_t* rows_a, int32_t* cols_a, int32_t* chan, void* out, bool out_is_T,
                                cudaStream_t stream) {
  using M = opmath<T>;
  if (B == 0 || H == 0 || W == 0) return;
  const int64_t r = patch / 2;
  const bool arg = rows_a != nullptr;
  const M om = static_cast<M>(omega);
  const bool post = A != nullptr;
  // the column pass writes compute-type values into `pre` (free by then), cast afterwards when out is T
  M* col_out = out_is_T ? pre : static_cast<M*>(out);
#define FD_LINES(MX, AR)                                                                                          \
  rows_kernel<T, MX, AR><<<blocks_for(B * H, kThreads), kThreads, 0, stream>>>(I, A, pre, chan, hv, ha, rows,     \
                                                                               rows_a, B, C, H, W, r);            \
  cols_kernel_strided<M, MX, AR><<<blocks_for(B * W, kThreads), kThreads, 0, stream>>>(rows, hv, ha, col_out,    \
                                                                                       cols_a, B, H, W, r, om, post);
  if (is_max) {
    if (arg) { FD_LINES(true, true) } else { FD_LINES(true, false) }
  } else {
    if (arg) { FD_LINES(false, true) } else { FD_LINES(false, false) }
  }
#undef FD_LINES
  if (out_is_T) cast_kernel<T><<<blocks_for(B * H * W, 256), 256, 0, stream>>>(pre, static_cast<T*>(out), B * H * W);
}

template <typename T>
void channel_scatter_cuda_launch(const T* grad, const int32_t* rows_a, const int32_t* cols_a, const int32_t* chan,
                                 opmath<T>* acc, T* gI, int64_t B, int64_t C, int64_t H, int64_t W,
                                 cudaStream_t stream) {
  if (B == 0 || H == 0 || W == 0) return;
  scatter_kernel<T><<<blocks_for(B * H * W, 256), 256, 0, stream>>>(grad, rows_a, cols_a, chan, acc, B, C, H, W);
  cast_kernel<T><<<blocks_for(B * C * H * W, 256), 256, 0, stream>>>(acc, gI, B * C * H * W);
}

template <typename T>
void atmospheric_light_cuda_launch(const T* I, const T* dark, opmath<T>* A, int64_t B, int64_t C, int64_t HW,
                                   int64_t k, cudaStream_t stream) {
  if (B == 0 || HW == 0) return;
  atmo_kernel<T><<<static_cast<unsigned>(B), 1024, 0, stream>>>(I, dark, A, C, HW, k < HW ? k : HW);
}

#define FD_INSTANTIATE(T)                                                                                            \
  template void channel_window_cuda_launch<T>(const T*, const opmath<T>*, double, bool, int64_t, int64_t, int64_t,   \
                                              int64_t, int64_t, opmath<T>*, opmath<T>*, opmath<T>*, int32_t*,        \
                                              int32_t*, int32_t*, int32_t*, void*, bool, cudaStream_t);              \
  template void channel_scatter_cuda_launch<T>(const T*, const int32_t*, const int32_t*, const int32_t*, opmath<T>*, \
                                               T*, int64_t, int64_t, int64_t, int64_t, cudaStream_t);                \
  template void atmospheric_light_cuda_launch<T>(const T*, const T*, opmath<T>*, int64_t, int64_t, int64_t, int64_t, \
                                                 cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
