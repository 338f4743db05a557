// Launchers of csrc/cuda/patch.cu (IICL patch ops, SPEC section 3), instantiated for float,
// double, __half and __nv_bfloat16. x is contiguous NCHW; corners are contiguous int64 [B,k,2];
// scores are in the compute type (float, or double for double).
#pragma once
#include "fastdehaze/cuda_common.h"

namespace fastdehaze {

// Patch means [B, nH*nW] of the brightness map of x. `scratch` is a device buffer of
// patch_scratch_elems(...) compute-type elements (may be null when that is 0).
template <typename T>
void patch_scores_cuda_launch(const T* x, opmath<T>* scores, opmath<T>* scratch, int64_t B, int64_t C, int64_t H,
                              int64_t W, int64_t patch, int64_t stride, int measure, cudaStream_t stream);

// Elements of compute type the scratch buffer of patch_scores_cuda_launch needs (0 when the
// per-block column sums fit in shared memory, i.e. for any patch below a few thousand pixels).
int64_t patch_scratch_elems(int64_t B, int64_t H, int64_t W, int64_t patch, int64_t stride, int64_t elem_size);

// Selection of the k first patches of each order from scores [B, n]: indices, scores and
// (y, x) corners, bright (descending, NaN first) and dark (ascending, NaN last).
template <typename S>
void patch_select_cuda_launch(const S* scores, int64_t B, int64_t n, int64_t nW, int64_t stride, int64_t k,
                              int64_t* bright_index, S* bright_score, int64_t* bright_corner, int64_t* dark_index,
                              S* dark_score, int64_t* dark_corner, cudaStream_t stream);

template <typename T>
void gather_patches_cuda_launch(const T* x, const int64_t* corners, T* out, int64_t B, int64_t C, int64_t H, int64_t W,
                                int64_t k, int64_t patch, cudaStream_t stream);

template <typename T>
void gather_patches_backward_cuda_launch(const T* grad, const int64_t* corners, T* gx, int64_t B, int64_t C, int64_t H,
                                         int64_t W, int64_t k, int64_t patch, cudaStream_t stream);

}  // namespace fastdehaze
