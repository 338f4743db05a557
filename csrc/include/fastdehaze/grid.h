// Launch plans of the CUDA kernels: plain host/device C++ (no CUDA types), compiled into the
// CUDA launchers (csrc/cuda/*.cu) and into the CPU extension (csrc/schemas/asm.cpp registers
// fastdehaze::_launch_plan / _launch_plan_cover, which tests/test_cuda_grid.py checks).
//
// Every kernel works on `units` logical blocks numbered u in [0, units): u = o * inner + i,
// o an "outer" index (image, plane, layer...) and i a block along it. The launch grid is 1-D,
// x = min(units, max_x) <= 2^31 - 1 (y = z = 1, so the 65535 limit of axes 1 and 2 never
// applies), and block blockIdx.x handles u = blockIdx.x, blockIdx.x + gridDim.x, ... (a
// block-uniform loop: every thread of a block sees the same u, so block-wide reductions and
// __syncthreads inside the loop are legal). Element kernels put `threads` consecutive elements
// of an outer index in one block: element e = i * threads + threadIdx.x, e < n.
#pragma once
#include <cstdint>

#include "fastdehaze/common.h"

namespace fastdehaze {
namespace grid {

constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1 (grid.x on sm_30+)
constexpr int64_t kMaxGridYZ = 65535;

struct Plan {
  int64_t gx, gy, gz;  // launch grid
  int64_t threads;     // block size
  int64_t units;       // logical blocks
  int64_t outer;       // outer indices
  int64_t inner;       // logical blocks per outer index
  int64_t n;           // elements per outer index (element plans), else inner
  int64_t per_thread;  // 1: element plan (thread t of block i owns element i * threads + t), 0: block plan
};

struct Unit {
  int64_t o, i;  // outer index, block along it
};

FD_HD Unit unit_of(const Plan& p, int64_t u) { return Unit{u / p.inner, u % p.inner}; }

// `outer` x `inner` logical blocks of `threads` threads.
inline Plan blocks(int64_t outer, int64_t inner, int64_t threads, int64_t max_x = kMaxGridX) {
  Plan p;
  p.threads = threads;
  p.outer = outer < 0 ? 0 : outer;
  p.inner = inner < 1 ? 1 : inner;
  p.n = p.inner;
  p.per_thread = 0;
  p.units = p.outer * p.inner;
  p.gx = p.units < max_x ? p.units : max_x;
  if (p.gx < 1) p.gx = 1;
  p.gy = p.gz = 1;
  return p;
}

// `outer` x `n` elements, `threads` consecutive elements of one outer index per block.
inline Plan elems(int64_t outer, int64_t n, int64_t threads, int64_t max_x = kMaxGridX) {
  Plan p = blocks(outer, n > 0 ? (n + threads - 1) / threads : 0, threads, max_x);
  if (n <= 0) p.units = 0, p.gx = 1;
  p.n = n;
  p.per_thread = 1;
  return p;
}

// Host simulation of a launch: calls f(o, i) for every logical block in the order block bx
// of the grid visits them (bx ascending, then its loop).
template <typename F>
void visit(const Plan& p, F&& f) {
  for (int64_t bx = 0; bx < p.gx; ++bx)
    for (int64_t u = bx; u < p.units; u += p.gx) {
      const Unit q = unit_of(p, u);
      f(q.o, q.i);
    }
}

// ---- the plans of the launchers, one per kernel family (names as in _launch_plan) ----------
// threads per block, shared with the .cu files
constexpr int64_t kAsmThreads = 256;
constexpr int64_t kDcpAtmoThreads = 1024;
constexpr int64_t kElemThreads = 256;
constexpr int64_t kBoxThreads = 256;
constexpr int64_t kPatchThreads = 256;
constexpr int64_t kDdThreads = 256;
constexpr int64_t kReduceThreads = 256;

// asm: one thread per pixel of image b (channels looped): outer B, n = HW.
inline Plan asm_pixels(int64_t B, int64_t HW) { return elems(B, HW, kAsmThreads); }
// two-pass parameter gradients: one block per (b, c) summing the pixel blocks' partials.
inline Plan param_reduce(int64_t BC) { return blocks(BC, 1, kReduceThreads); }
// dcp: element kernels flat (the line passes: one element per (line, task), see dcp.cu);
// atmospheric light: per-image steps one block per image, the passes over the pixels chunked.
inline Plan dcp_atmo(int64_t B) { return blocks(B, 1, kDcpAtmoThreads); }
// atmospheric light, multi-block: one block per (image, chunk of 16384 pixels = dcp_math::kAtmoChunk)
inline Plan dcp_atmo_chunks(int64_t B, int64_t HW) { return blocks(B, (HW + 16383) / 16384, 256); }
inline Plan flat(int64_t n) { return elems(1, n, kElemThreads); }
// filters: box rows (elements = (line, task): lines = planes x H, tasks per line), box columns
// (elements = (plane, task, column): plane tasks x W), per-pixel kernels of the guided filter
// (outer = B*C planes, n = HW).
inline Plan box_rows(int64_t lines, int64_t tasks) { return elems(1, lines * tasks, kBoxThreads); }
inline Plan box_cols(int64_t plane_tasks, int64_t W) { return elems(1, plane_tasks * W, kBoxThreads); }
inline Plan plane_pixels(int64_t P, int64_t HW) { return elems(P, HW, kBoxThreads); }
// patch: scores one block per (b * nH + patch row, tile); select one block per (b, order).
inline Plan patch_scores(int64_t B, int64_t nH, int64_t tiles) { return blocks(B * nH, tiles, kPatchThreads); }
inline Plan patch_select(int64_t B) { return blocks(B, 2, kPatchThreads); }
// gather and its backward: flat elements, grid.x capped at 65535 * 16 (the in-kernel loop does the rest).
inline Plan patch_gather(int64_t total) { return elems(1, total, kPatchThreads, 65535 * 16); }
// contrastive: the table's blocks (outer 1); the two-pass sums one block per (layer, q).
inline Plan contrastive_blocks(int64_t nblk) { return blocks(1, nblk, 256); }
inline Plan contrastive_reduce(int64_t LQ) { return blocks(LQ, 1, kReduceThreads); }
// depth_difference: lse partials (outer B, chunks), per-image combines, per-pixel kernels.
inline Plan dd_chunks(int64_t B, int64_t nchunk) { return blocks(B, nchunk, kDdThreads); }
inline Plan dd_images(int64_t B) { return blocks(B, 1, kDdThreads); }
inline Plan dd_pixels(int64_t B, int64_t HW) { return elems(B, HW, kDdThreads); }

}  // namespace grid
}  // namespace fastdehaze

#ifdef __CUDACC__
// Block-uniform loop over the logical blocks of a plan: `for (FD_UNITS(pl, u)) { ... }`.
#define FD_UNITS(pl, u) int64_t u = blockIdx.x; u < (pl).units; u += gridDim.x
#define FD_GRID(pl) static_cast<unsigned>((pl).gx)
#define FD_BLOCK(pl) static_cast<unsigned>((pl).threads)
#endif
