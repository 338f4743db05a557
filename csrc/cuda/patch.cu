// CUDA kernels of the IICL patch ops (SPEC section 3). The per-pixel measures and the rank
// order are csrc/include/fastdehaze/patch_math.h, shared with the CPU kernels.
//
// patch_scores_kernel: one block per (tile of up to BJ patch columns, patch row, image). Each
//   thread owns columns of the tile and sums the brightness of the patch row's `patch` image
//   rows into them (a warp reads consecutive pixels of one row: coalesced), the column sums go
//   to shared memory, then one thread per patch sums `patch` column sums. With stride >= patch
//   every pixel is read at most once; with stride < patch overlapping patch rows read their
//   shared rows again (from L2).
// patch_select_kernel: one block per (image, order): k rounds, each finding the first patch (in
//   the strict total order patch_math::precedes) after the previous pick: a strided scan plus a
//   shared-memory tree reduction. O(k n / threads) per image: meant for the small k of IICL.
// gather: one thread per output element; backward: one thread per input element summing the
//   patches that cover it (deterministic, no atomics; O(k) per pixel). Out-of-range corners
//   (possible only when value checks are off) read zeros and drop their gradient.
#include "patch.cuh"
#include "fastdehaze/patch_math.h"
#include "fastdehaze/grid.h"

namespace fastdehaze {
namespace {

namespace pm = patch_math;
constexpr int64_t kTileWidth = 256;       // target image columns per block of patch_scores_kernel
constexpr int64_t kSharedBytes = 48 * 1024;

struct Tiling {
  int64_t nH, nW, bj, tiles, width;  // patches per tile, tiles per patch row, tile width (columns)
};

Tiling tiling(int64_t H, int64_t W, int64_t p, int64_t s) {
  Tiling t;
  t.nH = (H - p) / s + 1;
  t.nW = (W - p) / s + 1;
  t.bj = p >= kTileWidth ? 1 : (kTileWidth - p) / s + 1;
  if (t.bj > t.nW) t.bj = t.nW;
  t.tiles = (t.nW + t.bj - 1) / t.bj;
  t.width = (t.bj - 1) * s + p;
  return t;
}

template <typename T, int M>
__global__ void patch_scores_kernel(grid::Plan pl, const T* __restrict__ x, opmath<T>* __restrict__ scores,
                                    opmath<T>* __restrict__ scratch, int64_t C, int64_t H, int64_t W, int64_t p,
                                    int64_t s, int64_t nH, int64_t nW, int64_t bj, int64_t width) {
  using op_t = opmath<T>;
  extern __shared__ unsigned char smem_raw[];
  for (FD_UNITS(pl, u)) {
    const grid::Unit un = grid::unit_of(pl, u);  // un.o = b * nH + i, un.i = tile
    const int64_t tile = un.i, i = un.o % nH, b = un.o / nH;
    const int64_t block_id = u;
    op_t* cs = scratch ? scratch + block_id * width : reinterpret_cast<op_t*>(smem_raw);
    const int64_t j0 = tile * bj;
    const int64_t jn = (nW - j0) < bj ? (nW - j0) : bj;
    const int64_t x0 = j0 * s, y0 = i * s;
    const int64_t w = (jn - 1) * s + p;
    const int64_t HW = H * W;
    const T* base = x + b * C * HW + y0 * W + x0;
    for (int64_t xx = threadIdx.x; xx < w; xx += blockDim.x) {
      op_t acc = 0;
      for (int64_t dy = 0; dy < p; ++dy) {
        const T* px = base + dy * W + xx;
        op_t v = pm::measure_step(op_t(0), load(px), 0, M);
        for (int64_t c = 1; c < C; ++c) v = pm::measure_step(v, load(px + c * HW), c, M);
        acc += pm::measure_finish(v, C, M);
      }
      cs[xx] = acc;
    }
    __syncthreads();
    const op_t area = static_cast<op_t>(p * p);
    for (int64_t jj = threadIdx.x; jj < jn; jj += blockDim.x) {
      op_t a = 0;
      const op_t* col = cs + jj * s;
      for (int64_t xx = 0; xx < p; ++xx) a += col[xx];
      scores[(b * nH + i) * nW + j0 + jj] = a / area;
    }
    __syncthreads();  // cs is rewritten by the next unit
  }
}

template <typename S>
struct Pick {
  S s;
  int64_t i;  // -1: none
};

template <typename S>
__device__ __forceinline__ bool better(const Pick<S>& a, const Pick<S>& b, bool desc) {
  if (a.i < 0) return false;
  if (b.i < 0) return true;
  return pm::precedes(a.s, a.i, b.s, b.i, desc);
}

template <typename S>
__global__ void patch_select_kernel(grid::Plan pl, const S* __restrict__ scores, int64_t n, int64_t nW, int64_t stride, int64_t k,
                                    int64_t* bi, S* bs, int64_t* bc, int64_t* di, S* ds, int64_t* dc) {
  __shared__ S red_s[grid::kPatchThreads];
  __shared__ int64_t red_i[grid::kPatchThreads];
  for (FD_UNITS(pl, u)) {
  const grid::Unit un = grid::unit_of(pl, u);
    const int64_t b = un.o;
    const bool desc = un.i == 0;
    const S* sc = scores + b * n;
    int64_t* oi = (desc ? bi : di) + b * k;
    S* os = (desc ? bs : ds) + b * k;
    int64_t* oc = (desc ? bc : dc) + b * k * 2;
    Pick<S> prev{S(0), -1};
    for (int64_t r = 0; r < k; ++r) {
      Pick<S> best{S(0), -1};
      for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
        const Pick<S> cand{sc[e], e};
        if (prev.i >= 0 && !pm::precedes(prev.s, prev.i, cand.s, cand.i, desc)) continue;  // already taken
        if (better(cand, best, desc)) best = cand;
      }
      red_s[threadIdx.x] = best.s;
      red_i[threadIdx.x] = best.i;
      __syncthreads();
      for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
          const Pick<S> a{red_s[threadIdx.x], red_i[threadIdx.x]}, c{red_s[threadIdx.x + o], red_i[threadIdx.x + o]};
          if (better(c, a, desc)) {
            red_s[threadIdx.x] = c.s;
            red_i[threadIdx.x] = c.i;
          }
        }
        __syncthreads();
      }
      prev = Pick<S>{red_s[0], red_i[0]};
      if (threadIdx.x == 0) {
        oi[r] = prev.i;
        os[r] = prev.s;
        oc[2 * r] = (prev.i / nW) * stride;
        oc[2 * r + 1] = (prev.i % nW) * stride;
      }
      __syncthreads();  // red_* are overwritten by the next round
    }
  }
}

template <typename T>
__global__ void gather_patches_kernel(grid::Plan pl, const T* __restrict__ x, const int64_t* __restrict__ corners, T* __restrict__ out,
                                      int64_t C, int64_t H, int64_t W, int64_t k, int64_t p, int64_t total) {
  const int64_t pp = p * p;
  for (FD_UNITS(pl, u)) {
    const int64_t e = u * blockDim.x + threadIdx.x;
    if (e >= total) continue;
    const int64_t dx = e % p, dy = (e / p) % p, c = (e / pp) % C, bq = e / (pp * C), b = bq / k;
    const int64_t y = corners[2 * bq] + dy, xx = corners[2 * bq + 1] + dx;
    const bool inside = y >= 0 && y < H && xx >= 0 && xx < W;
    if (inside) out[e] = x[((b * C + c) * H + y) * W + xx];
    else store(out + e, opmath<T>(0));
  }
}

template <typename T>
__global__ void gather_patches_backward_kernel(grid::Plan pl, const T* __restrict__ grad, const int64_t* __restrict__ corners,
                                               T* __restrict__ gx, int64_t C, int64_t H, int64_t W, int64_t k,
                                               int64_t p, int64_t total) {
  using op_t = opmath<T>;
  const int64_t HW = H * W;
  for (FD_UNITS(pl, u)) {
    const int64_t e = u * blockDim.x + threadIdx.x;
    if (e >= total) continue;
    const int64_t xx = e % W, y = (e / W) % H, bc = e / HW, c = bc % C, b = bc / C;
    op_t acc = 0;
    for (int64_t q = 0; q < k; ++q) {
      const int64_t dy = y - corners[2 * (b * k + q)], dx = xx - corners[2 * (b * k + q) + 1];
      if (dy >= 0 && dy < p && dx >= 0 && dx < p) acc += load(grad + (((b * k + q) * C + c) * p + dy) * p + dx);
    }
    store(gx + e, acc);
  }
}


}  // namespace

int64_t patch_scratch_elems(int64_t B, int64_t H, int64_t W, int64_t patch, int64_t stride, int64_t elem_size) {
  const Tiling t = tiling(H, W, patch, stride);
  if (t.width * elem_size <= kSharedBytes) return 0;
  return B * t.nH * t.tiles * t.width;
}

template <typename T>
void patch_scores_cuda_launch(const T* x, opmath<T>* scores, opmath<T>* scratch, int64_t B, int64_t C, int64_t H,
                              int64_t W, int64_t patch, int64_t stride, int measure, cudaStream_t stream) {
  if (B == 0) return;
  const Tiling t = tiling(H, W, patch, stride);
  const bool shared = t.width * static_cast<int64_t>(sizeof(opmath<T>)) <= kSharedBytes;
  const size_t smem = shared ? static_cast<size_t>(t.width * sizeof(opmath<T>)) : 0;
  opmath<T>* scr = shared ? nullptr : scratch;
  const grid::Plan pl = grid::patch_scores(B, t.nH, t.tiles);
#define FD_PATCH_LAUNCH(M)                                                                                      \
  patch_scores_kernel<T, M><<<FD_GRID(pl), FD_BLOCK(pl), smem, stream>>>(pl, x, scores, scr, C, H, W, patch, stride, \
                                                                        t.nH, t.nW, t.bj, t.width)
  switch (measure) {
    case pm::kLuma: FD_PATCH_LAUNCH(pm::kLuma); break;
    case pm::kMean: FD_PATCH_LAUNCH(pm::kMean); break;
    case pm::kDark: FD_PATCH_LAUNCH(pm::kDark); break;
    default: FD_PATCH_LAUNCH(pm::kMax); break;
  }
#undef FD_PATCH_LAUNCH
}

template <typename S>
void patch_select_cuda_launch(const S* scores, int64_t B, int64_t n, int64_t nW, int64_t stride, int64_t k,
                              int64_t* bright_index, S* bright_score, int64_t* bright_corner, int64_t* dark_index,
                              S* dark_score, int64_t* dark_corner, cudaStream_t stream) {
  if (B == 0 || k == 0) return;
  const grid::Plan pl = grid::patch_select(B);
  patch_select_kernel<S><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(
      pl, scores, n, nW, stride, k, bright_index, bright_score, bright_corner, dark_index, dark_score, dark_corner);
}

template <typename T>
void gather_patches_cuda_launch(const T* x, const int64_t* corners, T* out, int64_t B, int64_t C, int64_t H, int64_t W,
                                int64_t k, int64_t patch, cudaStream_t stream) {
  const int64_t total = B * k * C * patch * patch;
  if (total == 0) return;
  const grid::Plan pl = grid::patch_gather(total);
  gather_patches_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, x, corners, out, C, H, W, k, patch, total);
}

template <typename T>
void gather_patches_backward_cuda_launch(const T* grad, const int64_t* corners, T* gx, int64_t B, int64_t C, int64_t H,
                                         int64_t W, int64_t k, int64_t patch, cudaStream_t stream) {
  const int64_t total = B * C * H * W;
  if (total == 0) return;
  const grid::Plan pl = grid::patch_gather(total);
  gather_patches_backward_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, grad, corners, gx, C, H, W, k, patch,
                                                                                 total);
}

#define FD_INSTANTIATE(T)                                                                                            \
  template void patch_scores_cuda_launch<T>(const T*, opmath<T>*, opmath<T>*, int64_t, int64_t, int64_t, int64_t,   \
                                            int64_t, int64_t, int, cudaStream_t);                                   \
  template void gather_patches_cuda_launch<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t, int64_t,     \
                                              int64_t, int64_t, cudaStream_t);                                      \
  template void gather_patches_backward_cuda_launch<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t,     \
                                                       int64_t, int64_t, int64_t, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE
template void patch_select_cuda_launch<float>(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t*,
                                              float*, int64_t*, int64_t*, float*, int64_t*, cudaStream_t);
template void patch_select_cuda_launch<double>(const double*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t*,
                                               double*, int64_t*, int64_t*, double*, int64_t*, cudaStream_t);

}  // namespace fastdehaze
