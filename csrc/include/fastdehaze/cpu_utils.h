// Helpers for the C++ CPU kernels (host only).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

namespace fastdehaze {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

// Number of pixels a CPU task handles: big enough to amortise scheduling, small enough that
// per-task scratch stays in L1/L2.
constexpr int64_t kCpuPixelBlock = 2048;

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fastdehaze: ", name, " must be a CPU tensor for the cpu backend, got ", t.device());
}

}  // namespace fastdehaze
