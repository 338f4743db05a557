// Launchers of csrc/cuda/filters.cu (box and guided filters), instantiated for float, double,
// __half and __nv_bfloat16. Tensors are contiguous NCHW.
#pragma once
#include "fastdehaze/cuda_common.h"

namespace fastdehaze {

// Box filter of P planes H x W: out = border-normalised (2r+1)^2 mean (adjoint: box sum of
// x / count). tmp: P*H*W float64 scratch (the row pass result).
template <typename T>
void box_filter_cuda_launch(const T* x, T* out, double* tmp, int64_t P, int64_t H, int64_t W, int64_t r, bool adjoint,
                            cudaStream_t stream);

// Guided filter of p [B,C,H,W] by I [B,G,H,W] (G = 1 or 3). stats: B*C*K*H*W opmath scratch
// (K = 4 gray, 13 colour), ab: B*C*KA*H*W opmath scratch (KA = 2 gray, 4 colour), tmp: float64
// scratch of B*C*K*H*W.
template <typename T>
void guided_filter_cuda_launch(const T* I, const T* p, T* q, opmath<T>* stats, opmath<T>* ab, double* tmp, int64_t B,
                               int64_t C, int64_t G, int64_t H, int64_t W, int64_t r, double eps, cudaStream_t stream);

}  // namespace fastdehaze
