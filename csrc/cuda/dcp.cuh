// Launchers of csrc/cuda/dcp.cu (dark channel prior ops), instantiated for float, double,
// __half and __nv_bfloat16. Tensors are contiguous NCHW; A is [B,C] in the compute type.
// Scratch buffers are allocated by the caller (csrc/cuda/dcp_register.cpp).
#pragma once
#include "fastdehaze/cuda_common.h"

namespace fastdehaze {

// Window extremum of the channel extremum (dark/bright channel; with A: transmission
// 1 - omega * dark(I / max(A, 1e-6))). out [B,1,H,W] of T. With rows_a/cols_a/chan (int32, B*H*W
// each) non-null, the winners' column (row pass), row (column pass) and channel are written
// (out is then of the compute type). pre/rows/hv: compute-type scratch of B*H*W; ha: int32 B*H*W
// (only with the winners).
template <typename T>
void channel_window_cuda_launch(const T* I, const opmath<T>* A, double omega, bool is_max, int64_t B, int64_t C,
                                int64_t H, int64_t W, int64_t patch, opmath<T>* pre, opmath<T>* rows, opmath<T>* hv,
                                int32_t* ha, int32_t* rows_a, int32_t* cols_a, int32_t* chan, void* out, bool out_is_T,
                                cudaStream_t stream);

// gI [B,C,H,W] of T = the adjoint of the window extremum for the saved winners (a gather:
// dcp_math::col_adjoint into acc [B,H,W] (compute type, scratch), then dcp_math::row_adjoint;
// deterministic). patch: the forward's window size.
template <typename T>
void channel_scatter_cuda_launch(const T* grad, const int32_t* rows_a, const int32_t* cols_a, const int32_t* chan,
                                 opmath<T>* acc, T* gI, int64_t B, int64_t C, int64_t H, int64_t W, int64_t patch,
                                 cudaStream_t stream);

// A [B,C] (compute type) = mean of I over the k largest dark values (stable ties, NaN largest):
// multi-block radix select with 8-bit digits (deterministic). work: a zero-filled device buffer
// of atmospheric_light_workspace_bytes(B, C, HW) bytes, 8-byte aligned.
int64_t atmospheric_light_workspace_bytes(int64_t B, int64_t C, int64_t HW);
template <typename T>
void atmospheric_light_cuda_launch(const T* I, const T* dark, opmath<T>* A, int64_t B, int64_t C, int64_t HW,
                                   int64_t k, void* work, cudaStream_t stream);

}  // namespace fastdehaze
