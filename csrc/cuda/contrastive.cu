// CUDA kernels of the contrastive distance ops (SPEC section 4).
//
// Forward: one grid over all the layers of a table; a block owns kItems * kThreads consecutive
// elements of one layer (found by a scan of the small block0 table), keeps its anchor values
// in registers, and for each of p, n_1..n_K sums |a - x| in the compute type (per thread
// kItems values, then a warp/block tree), writing the block's partial sum (double) to a
// workspace [blocks, 1 + K]; contrastive_reduce_kernel sums each layer's partials in a fixed
// order (no atomics: deterministic). A one-warp kernel then turns the sums into the dists table
// and the per-layer terms lambda_l ratio_l. Launch plans: fastdehaze/grid.h. Every offset is
// int64 and each negative is its own pointer: no K x N product is ever formed. Backward: the same grid writes
//   dL/da = cp sign(a - p) - cn sum_k w_k sign(a - n_k)
// with cp, cn computed per block from the saved dists (contrastive_math.h, shared with the CPU).
#include "contrastive.cuh"
#include "fastdehaze/contrastive_math.h"
#include "fastdehaze/grid.h"

namespace fastdehaze {
namespace {

namespace cm = contrastive_math;
constexpr int kThreads = 256;
constexpr int kItems = 8;
constexpr int64_t kBlockElems = static_cast<int64_t>(kThreads) * kItems;

template <typename T>
__device__ __forceinline__ int layer_of_block(const ContrastiveTable<T>& tab, int64_t blk) {
  int l = 0;
  while (l + 1 < tab.L && blk >= tab.block0[l + 1]) ++l;
  return l;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) contrastive_sum_kernel(grid::Plan pl,
                                                                   const __grid_constant__ ContrastiveTable<T> tab,
                                                                   double* __restrict__ part, bool ablation) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, blk)) {
    const int l = layer_of_block(tab, blk);
    const int64_t N = tab.N[l];
    const int64_t base = (blk - tab.block0[l]) * kBlockElems + threadIdx.x;
    const T* a = tab.a[l];
    op_t av[kItems];
  #pragma unroll
    for (int r = 0; r < kItems; ++r) {
      const int64_t i = base + static_cast<int64_t>(r) * kThreads;
      av[r] = i < N ? load(a + i) : op_t(0);
    }
    const int Q = 1 + tab.K;
    const int Qr = ablation ? 1 : Q;
    for (int q = 0; q < Qr; ++q) {
      const T* x = q == 0 ? tab.p[l] : tab.n[l * tab.K + q - 1];
      op_t s = 0;
  #pragma unroll
      for (int r = 0; r < kItems; ++r) {
        const int64_t i = base + static_cast<int64_t>(r) * kThreads;
        if (i < N) s += fabs(av[r] - load(x + i));
      }
      s = block_sum(s);
      if (threadIdx.x == 0) part[blk * Q + q] = static_cast<double>(s);
    }
  }
}

// sums[l * Q + q] = sum of part[blk * Q + q] over the blocks of layer l, in a fixed order.
template <typename T>
__global__ void contrastive_reduce_kernel(grid::Plan pl, const __grid_constant__ ContrastiveTable<T> tab,
                                          const double* __restrict__ part, double* __restrict__ sums, bool ablation) {
  const int Q = 1 + tab.K;
  for (FD_UNITS(pl, u)) {
    const int l = static_cast<int>(u / Q), q = static_cast<int>(u % Q);
    double s = 0;
    if (!ablation || q == 0)
      for (int64_t blk = tab.block0[l] + threadIdx.x; blk < tab.block0[l + 1]; blk += blockDim.x) s += part[blk * Q + q];
    s = block_sum(s);
    if (threadIdx.x == 0) sums[u] = s;
  }
}

template <typename T>
__global__ void contrastive_finalize_kernel(const __grid_constant__ ContrastiveTable<T> tab,
                                            const double* __restrict__ sums, opmath<T>* __restrict__ dists,
                                            opmath<T>* __restrict__ term, const opmath<T>* __restrict__ lw,
                                            const opmath<T>* __restrict__ w, opmath<T> eps, bool ablation) {
  using op_t = opmath<T>;
  const int Q = 1 + tab.K;
  for (int l = threadIdx.x; l < tab.L; l += blockDim.x) {
    for (int q = 0; q < Q; ++q) {
      const double s = (ablation && q > 0) ? 0.0 : sums[l * Q + q];
      dists[l * Q + q] = static_cast<op_t>(tab.N[l] > 0 ? s / static_cast<double>(tab.N[l]) : nan(""));
    }
    term[l] = cm::layer_term<op_t>(dists + l * Q, w, tab.K, eps, lw[l], ablation);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) contrastive_backward_kernel(
    grid::Plan pl, const __grid_constant__ ContrastiveTable<T> tab, const opmath<T>* __restrict__ grad,
    const opmath<T>* __restrict__ dists, const opmath<T>* __restrict__ lw, const opmath<T>* __restrict__ w,
    opmath<T> eps, bool ablation) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, blk)) {
    const int l = layer_of_block(tab, blk);
    const int64_t N = tab.N[l];
    const int Q = 1 + tab.K;
    op_t cp, cn;
    cm::grad_coefs<op_t>(dists + static_cast<int64_t>(l) * Q, w, tab.K, eps, lw[l], ablation, *grad,
                         static_cast<op_t>(N), cp, cn);
    const int64_t base = (blk - tab.block0[l]) * kBlockElems + threadIdx.x;
    const T* a = tab.a[l];
    const T* p = tab.p[l];
  #pragma unroll
    for (int r = 0; r < kItems; ++r) {
      const int64_t i = base + static_cast<int64_t>(r) * kThreads;
      if (i >= N) break;
      const op_t av = load(a + i);
      op_t gv = cp * cm::sign(av - load(p + i));
      if (!ablation)
        for (int k = 0; k < tab.K; ++k) gv -= cn * w[k] * cm::sign(av - load(tab.n[l * tab.K + k] + i));
      store(tab.g[l] + i, gv);
    }
  }
}

}  // namespace

template <typename T>
void contrastive_forward_cuda_launch(const ContrastiveTable<T>& tab, double* sums, double* work, opmath<T>* dists,
                                     opmath<T>* term, const opmath<T>* lw, const opmath<T>* w, double eps, bool ablation,
                                     cudaStream_t stream) {
  if (tab.L == 0) return;
  const int64_t nblk = tab.block0[tab.L];
  if (nblk > 0) {
    const grid::Plan pl = grid::contrastive_blocks(nblk), pr = grid::contrastive_reduce(int64_t(tab.L) * (1 + tab.K));
    contrastive_sum_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, tab, work, ablation);
    contrastive_reduce_kernel<T><<<FD_GRID(pr), FD_BLOCK(pr), 0, stream>>>(pr, tab, work, sums, ablation);
  }
  contrastive_finalize_kernel<T><<<1, 32, 0, stream>>>(tab, sums, dists, term, lw, w, static_cast<opmath<T>>(eps),
                                                        ablation);
}

template <typename T>
void contrastive_backward_cuda_launch(const ContrastiveTable<T>& tab, const opmath<T>* grad, const opmath<T>* dists,
                                      const opmath<T>* lw, const opmath<T>* w, double eps, bool ablation,
                                      cudaStream_t stream) {
  if (tab.L == 0) return;
  const int64_t nblk = tab.block0[tab.L];
  if (nblk == 0) return;
  const grid::Plan pl = grid::contrastive_blocks(nblk);
  contrastive_backward_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(
      pl, tab, grad, dists, lw, w, static_cast<opmath<T>>(eps), ablation);
}

int64_t contrastive_block_elems() { return kBlockElems; }

#define FD_INSTANTIATE(T)                                                                                        \
  template void contrastive_forward_cuda_launch<T>(const ContrastiveTable<T>&, double*, double*, opmath<T>*,   \
                                                   opmath<T>*,                                                 \
                                                   const opmath<T>*, const opmath<T>*, double, bool,            \
                                                   cudaStream_t);                                               \
  template void contrastive_backward_cuda_launch<T>(const ContrastiveTable<T>&, const opmath<T>*,               \
                                                    const opmath<T>*, const opmath<T>*, const opmath<T>*,       \
                                                    double, bool, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
