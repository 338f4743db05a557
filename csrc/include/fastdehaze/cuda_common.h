// Shared by the plain CUDA kernels (.cu) and their registration files (*_register.cpp).
// The .cu files include no torch header (they compile in seconds); launchers take raw device
// pointers, sizes and a cudaStream_t, and the *_register.cpp files map at::Tensor onto them.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>

#include "fastdehaze/common.h"

namespace fastdehaze {

// Compute ("opmath") type of a storage type: float for float/half/bfloat16, double for double.
template <typename T> struct OpMath { using type = T; };
template <> struct OpMath<__half> { using type = float; };
template <> struct OpMath<__nv_bfloat16> { using type = float; };
template <typename T> using opmath = typename OpMath<T>::type;

#ifdef __CUDACC__
template <typename T> __device__ __forceinline__ opmath<T> load(const T* p) { return static_cast<opmath<T>>(*p); }
template <> __device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <typename T> __device__ __forceinline__ void store(T* p, opmath<T> v) { *p = static_cast<T>(v); }
template <> __device__ __forceinline__ void store<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < nw) ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
#endif

// Launch error check: returns the error string of the last launch, or nullptr.
inline const char* last_launch_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace fastdehaze
