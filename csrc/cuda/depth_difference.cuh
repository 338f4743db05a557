// Launchers of csrc/cuda/depth_difference.cu (DCMPNet difference perception, SPEC section 5),
// instantiated for float, double, __half and __nv_bfloat16. Tensors are contiguous NCHW;
// op_t = opmath<T> is the compute type (float for half storage). `work` is a scratch buffer of
// depth_difference_workspace(B, C, HW) op_t elements (partial results of the two-level
// reductions; no atomics, so results are deterministic).
#pragma once
#include "fastdehaze/cuda_common.h"

namespace fastdehaze {

int64_t depth_difference_workspace(int64_t B, int64_t C, int64_t HW);

// W [B,1,H,W] = scale sum_c softmax(diff)_c + C eps' (normalize: scale = HW, eps' = 0); lse [B].
template <typename T>
void difference_perception_weight_cuda_launch(const T* diff, T* W, opmath<T>* lse, opmath<T>* work, int64_t B,
                                              int64_t C, int64_t HW, double eps, bool normalize, cudaStream_t stream);

// grad_diff [B,C,H,W] = P (scale g - sum_p scale g_p S_p), g = grad [B,1,H,W].
template <typename T>
void difference_perception_weight_backward_cuda_launch(const T* grad, const T* diff, const opmath<T>* lse, T* grad_diff,
                                                       opmath<T>* work, int64_t B, int64_t C, int64_t HW,
                                                       bool normalize, cudaStream_t stream);

// loss (0-d) and stats [B,2] = (lse, 1/N sum_p S_p dL/dW_p) of L1(W D^, W D) + L1(D^, D).
template <typename T>
void depth_difference_loss_cuda_launch(const T* dehazed, const T* clear, const T* depth_pred, const T* depth_target,
                                       opmath<T>* loss, opmath<T>* stats, opmath<T>* work, int64_t B, int64_t C,
                                       int64_t HW, double eps, cudaStream_t stream);

// grad is a device pointer to the 0-d incoming gradient (no host sync); outputs may be null.
template <typename T>
void depth_difference_loss_backward_cuda_launch(const opmath<T>* grad, const T* dehazed, const T* clear,
                                                const T* depth_pred, const T* depth_target, const opmath<T>* stats,
                                                T* g_dehazed, T* g_clear, T* g_pred, T* g_target, int64_t B, int64_t C,
                                                int64_t HW, double eps, cudaStream_t stream);

}  // namespace fastdehaze
