// Launchers of csrc/cuda/asm.cu (atmospheric scattering model), instantiated for
// float, double, __half and __nv_bfloat16. Tensors are contiguous NCHW; A/t0 are [B,C] in
// the compute type; t has Ct = 1 or C channels.
#pragma once
#include "fastdehaze/cuda_common.h"
#include "fastdehaze/grid.h"

namespace fastdehaze {

// Backward launchers: `work` holds the per-block partial sums of the parameter gradients
// (deterministic two-pass reduction), asm_work_elems(...) compute-type elements; the gradient
// outputs (gA, gbeta, gb) are written whole (no zero-fill needed).
inline int64_t asm_work_elems(int64_t B, int64_t C, int64_t HW, int nparams) {
  return nparams * B * C * grid::asm_pixels(B, HW).inner;
}

template <typename T>
void recover_cuda_launch(const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* J, int64_t B, int64_t C,
                         int64_t HW, int64_t Ct, double lo, double hi, bool clamp, cudaStream_t stream);

// gA ([B,C]) may be null, and gI/gt, when not needed.
template <typename T>
void recover_backward_cuda_launch(const T* grad, const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* gI,
                                  T* gt, opmath<T>* gA, int64_t B, int64_t C, int64_t HW, int64_t Ct, double lo,
                                  double hi, bool clamp, opmath<T>* work, cudaStream_t stream);

// Synthesis I = (J - A) t + A; t has Ct = 1 or C channels.
template <typename T>
void synthesize_haze_cuda_launch(const T* J, const T* t, const opmath<T>* A, T* I, int64_t B, int64_t C, int64_t HW,
                                 int64_t Ct, cudaStream_t stream);
// gA, gJ, gt may be null.
template <typename T>
void synthesize_haze_backward_cuda_launch(const T* grad, const T* J, const T* t, const opmath<T>* A, T* gJ, T* gt,
                                          opmath<T>* gA, int64_t B, int64_t C, int64_t HW, int64_t Ct,
                                          opmath<T>* work, cudaStream_t stream);

// Synthesis from depth in one pass: I = (J - A) exp(-beta d) + A; depth has Cd = 1 or C channels.
template <typename T>
void synthesize_haze_depth_cuda_launch(const T* J, const T* depth, const opmath<T>* A, const opmath<T>* beta, T* I,
                                       int64_t B, int64_t C, int64_t HW, int64_t Cd, cudaStream_t stream);
// gA, gbeta, gJ, gd may be null (work: 2 parameter planes).
template <typename T>
void synthesize_haze_depth_backward_cuda_launch(const T* grad, const T* J, const T* depth, const opmath<T>* A,
                                                const opmath<T>* beta, T* gJ, T* gd, opmath<T>* gA, opmath<T>* gbeta,
                                                int64_t B, int64_t C, int64_t HW, int64_t Cd, opmath<T>* work, cudaStream_t stream);

// t [B,C,HW] = exp(-beta d); depth has Cd = 1 or C channels; beta [B,C].
template <typename T>
void transmission_from_depth_cuda_launch(const T* depth, const opmath<T>* beta, T* t, int64_t B, int64_t C, int64_t HW,
                                         int64_t Cd, cudaStream_t stream);
// gbeta, gd may be null.
template <typename T>
void transmission_from_depth_backward_cuda_launch(const T* grad, const T* depth, const opmath<T>* beta, T* gd,
                                                  opmath<T>* gbeta, int64_t B, int64_t C, int64_t HW, int64_t Cd,
                                                  opmath<T>* work, cudaStream_t stream);

// J = K I - K + b; K has Ck = 1 or C channels; b [B,C].
template <typename T>
void recompose_k_cuda_launch(const T* I, const T* K, const opmath<T>* bias, T* J, int64_t B, int64_t C, int64_t HW,
                             int64_t Ck, cudaStream_t stream);
// gb, gI, gK may be null.
template <typename T>
void recompose_k_backward_cuda_launch(const T* grad, const T* I, const T* K, T* gI, T* gK, opmath<T>* gb, int64_t B,
                                      int64_t C, int64_t HW, int64_t Ck, opmath<T>* work, cudaStream_t stream);

}  // namespace fastdehaze
