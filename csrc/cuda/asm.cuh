// Launchers of csrc/cuda/asm.cu (atmospheric scattering model), instantiated for
// float, double, __half and __nv_bfloat16. Tensors are contiguous NCHW; A/t0 are [B,C] in
// the compute type; t has Ct = 1 or C channels.
#pragma once
#include "fastdehaze/cuda_common.h"

namespace fastdehaze {

template <typename T>
void recover_cuda_launch(const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* J, int64_t B, int64_t C,
                         int64_t HW, int64_t Ct, double lo, double hi, bool clamp, cudaStream_t stream);

// gA must be zero-filled ([B,C]) when not null; gI/gt may be null when not needed.
template <typename T>
void recover_backward_cuda_launch(const T* grad, const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* gI,
                                  T* gt, opmath<T>* gA, int64_t B, int64_t C, int64_t HW, int64_t Ct, double lo,
                                  double hi, bool clamp, cudaStream_t stream);

}  // namespace fastdehaze
