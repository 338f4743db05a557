// CUDA kernels of the depth-difference ops (DCMPNet difference perception, SPEC section 5).
//
// Softmax statistics: lse_partial (grid = chunks x B): each thread keeps an online pair
// (running max, sum of exp) over a strided part of a chunk, merged over the block by warp
// shuffles; lse_combine (grid = B) merges the chunks' pairs into lse (the second level).
// Per-pixel kernels: one thread per pixel, looping over channels (grid = pixel blocks x B);
// reductions write one partial per block, summed by a second small kernel (deterministic).
// Per-element math (exp, merge, loss terms): csrc/include/fastdehaze/depth_difference_math.h.
#include "depth_difference.cuh"
#include "fastdehaze/depth_difference_math.h"
#include "fastdehaze/grid.h"

namespace fastdehaze {
namespace {

namespace dm = depth_difference_math;
constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;  // values per lse_partial block

int64_t nchunk_of(int64_t N) { return N > 0 ? (N + kChunk - 1) / kChunk : 1; }
int64_t nblk_of(int64_t HW) { return (HW + kThreads - 1) / kThreads; }

template <typename op_t>
__device__ __forceinline__ void block_merge(op_t& m, op_t& s) {
  __shared__ op_t sm[32], ss[32];
  for (int o = 16; o > 0; o >>= 1) {
    const op_t m2 = __shfl_down_sync(0xffffffffu, m, o), s2 = __shfl_down_sync(0xffffffffu, s, o);
    dm::merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < nw ? sm[lane] : dm::neg_inf<op_t>();
    s = lane < nw ? ss[lane] : op_t(0);
    for (int o = 16; o > 0; o >>= 1) {
      const op_t m2 = __shfl_down_sync(0xffffffffu, m, o), s2 = __shfl_down_sync(0xffffffffu, s, o);
      dm::merge(m, s, m2, s2);
    }
  }
}

// Pairs (max, sum exp) of each chunk of kChunk values of x = a - c (c may be null).
template <typename T>
__global__ void lse_partial_kernel(grid::Plan pl, const T* __restrict__ a, const T* __restrict__ c, int64_t N, opmath<T>* pm,
                                   opmath<T>* ps) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o, k = un.i;
    const int64_t i0 = k * kChunk, i1 = i0 + kChunk < N ? i0 + kChunk : N;
    op_t m = dm::neg_inf<op_t>(), s = op_t(0);
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
      op_t x = load(a + b * N + i);
      if (c) x -= load(c + b * N + i);
      dm::merge(m, s, x, op_t(1));
    }
    block_merge(m, s);
    if (threadIdx.x == 0) {
      pm[u] = m;
      ps[u] = s;
    }
  }
}

template <typename op_t>
__global__ void lse_combine_kernel(grid::Plan pl, const op_t* pm, const op_t* ps, int64_t nchunk, op_t* lse, int64_t stride) {
  for (FD_UNITS(pl, u)) {
    const int64_t b = u;
    op_t m = dm::neg_inf<op_t>(), s = op_t(0);
    for (int64_t k = threadIdx.x; k < nchunk; k += blockDim.x) dm::merge(m, s, pm[b * nchunk + k], ps[b * nchunk + k]);
    block_merge(m, s);
    if (threadIdx.x == 0) lse[b * stride] = dm::finalize_lse(m, s);
  }
}

template <typename T>
void launch_lse(const T* a, const T* c, int64_t B, int64_t N, opmath<T>* lse, int64_t stride, opmath<T>* work,
                cudaStream_t stream) {
  const int64_t nchunk = nchunk_of(N);
  const grid::Plan pc = grid::dd_chunks(B, nchunk), pb = grid::dd_images(B);
  lse_partial_kernel<T><<<FD_GRID(pc), FD_BLOCK(pc), 0, stream>>>(
      pc, a, c, N, work, work + B * nchunk);
  lse_combine_kernel<opmath<T>><<<FD_GRID(pb), FD_BLOCK(pb), 0, stream>>>(pb, work, work + B * nchunk, nchunk, lse,
                                                                                 stride);
}

// S = sum_c exp(a_c - c_c - L) at pixel p of image b.
template <typename T>
__device__ __forceinline__ opmath<T> softmax_sum(const T* a, const T* c, int64_t b, int64_t C, int64_t HW, int64_t p,
                                                 opmath<T> L) {
  using op_t = opmath<T>;
  op_t S = 0;
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t off = (b * C + ch) * HW + p;
    op_t x = load(a + off);
    if (c) x -= load(c + off);
    S += dm::dd_exp(x - L);
  }
  return S;
}

template <typename T>
__global__ void dpw_kernel(grid::Plan pl, const T* __restrict__ d, const opmath<T>* __restrict__ lse, T* __restrict__ W, int64_t C,
                           int64_t HW, opmath<T> scale, opmath<T> ceps) {
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o, p = un.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    store(W + b * HW + p, scale * softmax_sum<T>(d, nullptr, b, C, HW, p, lse[b]) + ceps);
  }
}

// part[b, blk] = sum over the block's pixels of scale g_p S_p.
template <typename T>
__global__ void dpw_dot_kernel(grid::Plan pl, const T* __restrict__ g, const T* __restrict__ d, const opmath<T>* __restrict__ lse,
                               opmath<T>* part, int64_t C, int64_t HW, opmath<T> scale) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o, p = un.i * blockDim.x + threadIdx.x;
    op_t v = 0;
    if (p < HW) v = scale * load(g + b * HW + p) * softmax_sum<T>(d, nullptr, b, C, HW, p, lse[b]);
    v = block_sum(v);
    if (threadIdx.x == 0) part[u] = v;
  }
}

// out[b * stride] = scale * sum_k part[b, k, field] (nfield values per partial), in double.
template <typename op_t>
__global__ void sum_parts_kernel(grid::Plan pl, const op_t* part, int64_t nblk, int nfield, int field, op_t* out, int64_t stride,
                                 double scale) {
  for (FD_UNITS(pl, u)) {
    const int64_t b = u;
    double v = 0;
    for (int64_t k = threadIdx.x; k < nblk; k += blockDim.x) v += static_cast<double>(part[(b * nblk + k) * nfield + field]);
    v = block_sum(v);
    if (threadIdx.x == 0) out[b * stride] = static_cast<op_t>(v * scale);
  }
}

template <typename T>
__global__ void dpw_grad_kernel(grid::Plan pl, const T* __restrict__ g, const T* __restrict__ d, const opmath<T>* __restrict__ lse,
                                const opmath<T>* __restrict__ dot, T* __restrict__ gd, int64_t C, int64_t HW,
                                opmath<T> scale) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o, p = un.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    const op_t coef = scale * load(g + b * HW + p) - dot[b], L = lse[b];
    for (int64_t ch = 0; ch < C; ++ch) {
      const int64_t off = (b * C + ch) * HW + p;
      store(gd + off, dm::dd_exp(load(d + off) - L) * coef);
    }
  }
}

// part[b, blk, 0..2] = block sums of |W e|, |e|, S dL/dW (up to g/N).
template <typename T>
__global__ void ddl_partial_kernel(grid::Plan pl, const T* __restrict__ dh, const T* __restrict__ cl, const T* __restrict__ Dp,
                                   const T* __restrict__ Dt, const opmath<T>* __restrict__ stats, opmath<T>* part,
                                   int64_t C, int64_t HW, opmath<T> ceps) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o, p = un.i * blockDim.x + threadIdx.x;
    op_t v1 = 0, v2 = 0, v3 = 0;
    if (p < HW) {
      const op_t S = softmax_sum<T>(dh, cl, b, C, HW, p, stats[b * 2]);
      const op_t W = S + ceps, e = load(Dp + b * HW + p) - load(Dt + b * HW + p);
      v1 = dm::abs_(W * e);
      v2 = dm::abs_(e);
      v3 = S * dm::loss_dW(W, e);
    }
    v1 = block_sum(v1);
    v2 = block_sum(v2);
    v3 = block_sum(v3);
    if (threadIdx.x == 0) {
      op_t* q = part + (u) * 3;
      q[0] = v1;
      q[1] = v2;
      q[2] = v3;
    }
  }
}

// loss = sum of fields 0 and 1 of all partials / N (one block, in double).
template <typename op_t>
__global__ void ddl_loss_kernel(const op_t* part, int64_t nparts, op_t* loss, double invN) {
  double v = 0;
  for (int64_t k = threadIdx.x; k < nparts; k += blockDim.x)
    v += static_cast<double>(part[k * 3]) + static_cast<double>(part[k * 3 + 1]);
  v = block_sum(v);
  if (threadIdx.x == 0) *loss = static_cast<op_t>(v * invN);
}

template <typename T>
__global__ void ddl_backward_kernel(grid::Plan pl, const opmath<T>* __restrict__ grad, const T* __restrict__ dh,
                                    const T* __restrict__ cl, const T* __restrict__ Dp, const T* __restrict__ Dt,
                                    const opmath<T>* __restrict__ stats, T* gh, T* gc, T* gp, T* gt, int64_t C,
                                    int64_t HW, opmath<T> invN, opmath<T> ceps) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o, p = un.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    const op_t g = *grad, L = stats[b * 2], gdot = g * stats[b * 2 + 1], inv = g * invN;
    const op_t S = softmax_sum<T>(dh, cl, b, C, HW, p, L);
    const op_t W = S + ceps, e = load(Dp + b * HW + p) - load(Dt + b * HW + p);
    const op_t gD = inv * dm::loss_dDpred(W, e);
    if (gp) store(gp + b * HW + p, gD);
    if (gt) store(gt + b * HW + p, -gD);
    if (!gh && !gc) continue;
    const op_t coef = inv * dm::loss_dW(W, e) - gdot;
    for (int64_t ch = 0; ch < C; ++ch) {
      const int64_t off = (b * C + ch) * HW + p;
      const op_t v = dm::dd_exp(load(dh + off) - load(cl + off) - L) * coef;
      if (gh) store(gh + off, v);
      if (gc) store(gc + off, -v);
    }
  }
}


}  // namespace

int64_t depth_difference_workspace(int64_t B, int64_t C, int64_t HW) {
  const int64_t a = 2 * B * nchunk_of(C * HW), b = 3 * B * nblk_of(HW) + B;
  return a > b ? a : b;
}

template <typename T>
void difference_perception_weight_cuda_launch(const T* diff, T* W, opmath<T>* lse, opmath<T>* work, int64_t B,
                                              int64_t C, int64_t HW, double eps, bool normalize, cudaStream_t stream) {
  using op_t = opmath<T>;
  const grid::Plan pp = grid::dd_pixels(B, HW), pb = grid::dd_images(B);
  if (B == 0) return;
  launch_lse<T>(diff, nullptr, B, C * HW, lse, 1, work, stream);
  if (HW == 0) return;
  const op_t scale = normalize ? static_cast<op_t>(HW) : op_t(1);
  const op_t ceps = normalize ? op_t(0) : static_cast<op_t>(C) * static_cast<op_t>(eps);
  dpw_kernel<T><<<FD_GRID(pp), FD_BLOCK(pp), 0, stream>>>(pp, diff, lse, W, C, HW, scale, ceps);
}

template <typename T>
void difference_perception_weight_backward_cuda_launch(const T* grad, const T* diff, const opmath<T>* lse, T* grad_diff,
                                                       opmath<T>* work, int64_t B, int64_t C, int64_t HW,
                                                       bool normalize, cudaStream_t stream) {
  using op_t = opmath<T>;
  const grid::Plan pp = grid::dd_pixels(B, HW), pb = grid::dd_images(B);
  if (B == 0 || C == 0 || HW == 0) return;
  const op_t scale = normalize ? static_cast<op_t>(HW) : op_t(1);
  const int64_t nblk = nblk_of(HW);
  op_t* dot = work + B * nblk;
  dpw_dot_kernel<T><<<FD_GRID(pp), FD_BLOCK(pp), 0, stream>>>(pp, grad, diff, lse, work, C, HW, scale);
  sum_parts_kernel<op_t><<<FD_GRID(pb), FD_BLOCK(pb), 0, stream>>>(pb, work, nblk, 1, 0, dot, 1, 1.0);
  dpw_grad_kernel<T><<<FD_GRID(pp), FD_BLOCK(pp), 0, stream>>>(pp, grad, diff, lse, dot, grad_diff, C, HW, scale);
}

template <typename T>
void depth_difference_loss_cuda_launch(const T* dehazed, const T* clear, const T* depth_pred, const T* depth_target,
                                       opmath<T>* loss, opmath<T>* stats, opmath<T>* work, int64_t B, int64_t C,
                                       int64_t HW, double eps, cudaStream_t stream) {
  using op_t = opmath<T>;
  const grid::Plan pp = grid::dd_pixels(B, HW), pb = grid::dd_images(B);
  if (B == 0 || HW == 0) return;  // the caller fills NaN (mean of nothing)
  launch_lse<T>(dehazed, clear, B, C * HW, stats, 2, work, stream);
  const int64_t nblk = nblk_of(HW);
  const op_t ceps = static_cast<op_t>(C) * static_cast<op_t>(eps);
  const double invN = 1.0 / static_cast<double>(B * HW);
  ddl_partial_kernel<T><<<FD_GRID(pp), FD_BLOCK(pp), 0, stream>>>(pp, dehazed, clear, depth_pred, depth_target, stats,
                                                                     work, C, HW, ceps);
  sum_parts_kernel<op_t><<<FD_GRID(pb), FD_BLOCK(pb), 0, stream>>>(pb, work, nblk, 3, 2, stats + 1, 2, invN);
  ddl_loss_kernel<op_t><<<1, 1024, 0, stream>>>(work, B * nblk, loss, invN);
}

template <typename T>
void depth_difference_loss_backward_cuda_launch(const opmath<T>* grad, const T* dehazed, const T* clear,
                                                const T* depth_pred, const T* depth_target, const opmath<T>* stats,
                                                T* g_dehazed, T* g_clear, T* g_pred, T* g_target, int64_t B, int64_t C,
                                                int64_t HW, double eps, cudaStream_t stream) {
  using op_t = opmath<T>;
  const grid::Plan pp = grid::dd_pixels(B, HW), pb = grid::dd_images(B);
  if (B == 0 || HW == 0) return;
  const op_t invN = static_cast<op_t>(1.0 / static_cast<double>(B * HW));
  const op_t ceps = static_cast<op_t>(C) * static_cast<op_t>(eps);
  ddl_backward_kernel<T><<<FD_GRID(pp), FD_BLOCK(pp), 0, stream>>>(pp, grad, dehazed, clear, depth_pred, depth_target,
                                                                      stats, g_dehazed, g_clear, g_pred, g_target, C,
                                                                      HW, invN, ceps);
}

#define FD_INSTANTIATE(T)                                                                                             \
  template void difference_perception_weight_cuda_launch<T>(const T*, T*, opmath<T>*, opmath<T>*, int64_t, int64_t,  \
                                                            int64_t, double, bool, cudaStream_t);                    \
  template void difference_perception_weight_backward_cuda_launch<T>(const T*, const T*, const opmath<T>*, T*,       \
                                                                     opmath<T>*, int64_t, int64_t, int64_t, bool,    \
                                                                     cudaStream_t);                                  \
  template void depth_difference_loss_cuda_launch<T>(const T*, const T*, const T*, const T*, opmath<T>*, opmath<T>*,  \
                                                     opmath<T>*, int64_t, int64_t, int64_t, double, cudaStream_t);   \
  template void depth_difference_loss_backward_cuda_launch<T>(const opmath<T>*, const T*, const T*, const T*,        \
                                                              const T*, const opmath<T>*, T*, T*, T*, T*, int64_t,   \
                                                              int64_t, int64_t, double, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
