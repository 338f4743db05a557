// Helpers for csrc/cuda/*_register.cpp: map at::Tensor storage types to the CUDA types of the
// plain launchers, guard the device and take the current stream (host C++ only, no nvcc).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include "fastdehaze/cuda_common.h"

namespace fastdehaze {

template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<c10::Half> { using type = __half; };
template <> struct CudaType<c10::BFloat16> { using type = __nv_bfloat16; };

template <typename scalar_t>
using cuda_t = typename CudaType<scalar_t>::type;

// Typed raw pointer of a tensor for the launchers (nullptr for an undefined or empty-[0] tensor
// standing for "not needed").
template <typename T>
inline T* ptr(const at::Tensor& t) {
  if (!t.defined() || (t.dim() == 1 && t.numel() == 0)) return nullptr;
  return reinterpret_cast<T*>(t.data_ptr());
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fastdehaze: ", name, " must be a CUDA tensor for the cuda backend, got ", t.device());
}

inline void check_launch(const char* op) {
  const char* err = last_launch_error();
  TORCH_CHECK(err == nullptr, "fastdehaze: CUDA launch of ", op, " failed: ", err ? err : "");
}

}  // namespace fastdehaze
