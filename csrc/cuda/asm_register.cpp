// Registers the CUDA kernels of csrc/cuda/asm.cu for the ASM ops (schemas: csrc/schemas/asm.cpp).
// Every launch runs on the current stream of the input's device, under a device guard.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "asm.cuh"
#include "fastdehaze/cuda_register.h"

namespace fastdehaze {
namespace {

at::Tensor recover_cuda(const at::Tensor& I, const at::Tensor& t, const at::Tensor& A, const at::Tensor& t0, double lo,
                        double hi, bool clamp) {
  check_cuda(I, "I");
  TORCH_CHECK(I.dim() == 4 && t.dim() == 4 && (t.size(1) == 1 || t.size(1) == I.size(1)), "fastdehaze::recover: bad shapes");
  TORCH_CHECK(t.scalar_type() == I.scalar_type(), "fastdehaze::recover: t must have I's dtype");
  c10::cuda::CUDAGuard guard(I.device());
  auto Ic = I.contiguous(), tc = t.contiguous(), Ac = A.contiguous(), t0c = t0.contiguous();
  auto out = at::empty_like(Ic, at::MemoryFormat::Contiguous);
  const int64_t B = I.size(0), C = I.size(1), HW = I.size(2) * I.size(3);
  TORCH_CHECK(Ac.numel() == B * C && t0c.numel() == B * C, "fastdehaze::recover: A and t0 must be [B,C]");
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recover_cuda", [&] {
    using T = cuda_t<scalar_t>;
    recover_cuda_launch<T>(ptr<const T>(Ic), ptr<const T>(tc), ptr<const opmath<T>>(Ac), ptr<const opmath<T>>(t0c),
                           ptr<T>(out), B, C, HW, tc.size(1), lo, hi, clamp, stream);
  });
  check_launch("recover");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recover_backward_cuda(const at::Tensor& grad, const at::Tensor& I,
                                                                     const at::Tensor& t, const at::Tensor& A,
                                                                     const at::Tensor& t0, double lo, double hi,
                                                                     bool clamp, bool needs_I, bool needs_t,
                                                                     bool needs_A) {
  check_cuda(I, "I");
  c10::cuda::CUDAGuard guard(I.device());
  auto gc = grad.contiguous(), Ic = I.contiguous(), tc = t.contiguous(), Ac = A.contiguous(), t0c = t0.contiguous();
  const int64_t B = I.size(0), C = I.size(1), HW = I.size(2) * I.size(3);
  auto gI = needs_I ? at::empty_like(Ic, at::MemoryFormat::Contiguous) : at::empty({0}, I.options());
  auto gt = needs_t ? at::empty_like(tc, at::MemoryFormat::Contiguous) : at::empty({0}, t.options());
  auto gA = needs_A ? at::zeros({B, C}, A.options()) : at::empty({0}, A.options());
  if (Ic.numel() == 0 || !(needs_I || needs_t || needs_A)) return {gI, gt, gA};
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recover_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    recover_backward_cuda_launch<T>(ptr<const T>(gc), ptr<const T>(Ic), ptr<const T>(tc), ptr<const opmath<T>>(Ac),
                                    ptr<const opmath<T>>(t0c), ptr<T>(gI), ptr<T>(gt), ptr<opmath<T>>(gA), B, C, HW,
                                    tc.size(1), lo, hi, clamp, stream);
  });
  check_launch("recover_backward");
  return {gI, gt, gA};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CUDA, m) {
  m.impl("recover", &recover_cuda);
  m.impl("recover_backward", &recover_backward_cuda);
}

}  // namespace fastdehaze

FD_PYTHON_MODULE(_cuda_asm)
