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
  auto work = at::empty({asm_work_elems(B, C, HW, needs_A ? 1 : 0)}, A.options());
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recover_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    recover_backward_cuda_launch<T>(ptr<const T>(gc), ptr<const T>(Ic), ptr<const T>(tc), ptr<const opmath<T>>(Ac),
                                    ptr<const opmath<T>>(t0c), ptr<T>(gI), ptr<T>(gt), ptr<opmath<T>>(gA), B, C, HW,
                                    tc.size(1), lo, hi, clamp, ptr<opmath<T>>(work), stream);
  });
  check_launch("recover_backward");
  return {gI, gt, gA};
}

// ---- synthesize_haze, transmission_from_depth, recompose_k ------------------------------------

// X [B,C,H,W]; M [B,1|C,H,W] with X's dtype; P [B,C].
void check_image_map(const char* op, const at::Tensor& X, const at::Tensor& M, const at::Tensor& P) {
  check_cuda(X, op);
  TORCH_CHECK(X.dim() == 4 && M.dim() == 4 && M.size(0) == X.size(0) && M.size(2) == X.size(2) && M.size(3) == X.size(3) &&
                  (M.size(1) == 1 || M.size(1) == X.size(1)),
              "fastdehaze::", op, ": the per-pixel map must be [B,1,H,W] or [B,C,H,W] matching the image");
  TORCH_CHECK(M.scalar_type() == X.scalar_type(), "fastdehaze::", op, ": the per-pixel map must have the image's dtype");
  TORCH_CHECK(P.numel() == X.size(0) * X.size(1), "fastdehaze::", op, ": the parameter must be [B,C]");
}

at::Tensor grad_like(const at::Tensor& x, bool needed) {
  return needed ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
}
at::Tensor grad_param(int64_t B, int64_t C, const at::Tensor& P, bool needed) {
  return needed ? at::zeros({B, C}, P.options()) : at::empty({0}, P.options());
}

at::Tensor synthesize_haze_cuda(const at::Tensor& J, const at::Tensor& t, const at::Tensor& A) {
  check_image_map("synthesize_haze", J, t, A);
  c10::cuda::CUDAGuard guard(J.device());
  auto Jc = J.contiguous(), tc = t.contiguous(), Ac = A.contiguous();
  auto out = at::empty_like(Jc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t B = J.size(0), C = J.size(1), HW = J.size(2) * J.size(3);
  auto stream = c10::cuda::getCurrentCUDAStream(J.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_cuda", [&] {
    using T = cuda_t<scalar_t>;
    synthesize_haze_cuda_launch<T>(ptr<const T>(Jc), ptr<const T>(tc), ptr<const opmath<T>>(Ac), ptr<T>(out), B, C, HW,
                                   tc.size(1), stream);
  });
  check_launch("synthesize_haze");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> synthesize_haze_backward_cuda(const at::Tensor& grad, const at::Tensor& J,
                                                                             const at::Tensor& t, const at::Tensor& A,
                                                                             bool needs_J, bool needs_t, bool needs_A) {
  check_image_map("synthesize_haze_backward", J, t, A);
  c10::cuda::CUDAGuard guard(J.device());
  auto gc = grad.contiguous(), Jc = J.contiguous(), tc = t.contiguous(), Ac = A.contiguous();
  const int64_t B = J.size(0), C = J.size(1), HW = J.size(2) * J.size(3);
  auto gJ = grad_like(Jc, needs_J), gt = grad_like(tc, needs_t), gA = grad_param(B, C, A, needs_A);
  if (Jc.numel() == 0 || !(needs_J || needs_t || needs_A)) {
    if (needs_t) gt.zero_();
    return {gJ, gt, gA};
  }
  auto work = at::empty({asm_work_elems(B, C, HW, needs_A ? 1 : 0)}, A.options());
  auto stream = c10::cuda::getCurrentCUDAStream(J.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    synthesize_haze_backward_cuda_launch<T>(ptr<const T>(gc), ptr<const T>(Jc), ptr<const T>(tc),
                                            ptr<const opmath<T>>(Ac), ptr<T>(gJ), ptr<T>(gt), ptr<opmath<T>>(gA), B, C,
                                            HW, tc.size(1), ptr<opmath<T>>(work), stream);
  });
  check_launch("synthesize_haze_backward");
  return {gJ, gt, gA};
}

at::Tensor synthesize_haze_depth_cuda(const at::Tensor& J, const at::Tensor& depth, const at::Tensor& A,
                                      const at::Tensor& beta) {
  check_image_map("synthesize_haze_depth", J, depth, A);
  TORCH_CHECK(beta.numel() == A.numel() && beta.scalar_type() == A.scalar_type(),
              "fastdehaze::synthesize_haze_depth: beta must be [B,C] like A");
  c10::cuda::CUDAGuard guard(J.device());
  auto Jc = J.contiguous(), dc = depth.contiguous(), Ac = A.contiguous(), bc = beta.contiguous();
  auto out = at::empty_like(Jc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t B = J.size(0), C = J.size(1), HW = J.size(2) * J.size(3);
  auto stream = c10::cuda::getCurrentCUDAStream(J.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_depth_cuda", [&] {
    using T = cuda_t<scalar_t>;
    synthesize_haze_depth_cuda_launch<T>(ptr<const T>(Jc), ptr<const T>(dc), ptr<const opmath<T>>(Ac),
                                         ptr<const opmath<T>>(bc), ptr<T>(out), B, C, HW, dc.size(1), stream);
  });
  check_launch("synthesize_haze_depth");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> synthesize_haze_depth_backward_cuda(
    const at::Tensor& grad, const at::Tensor& J, const at::Tensor& depth, const at::Tensor& A, const at::Tensor& beta,
    bool needs_J, bool needs_depth, bool needs_A, bool needs_beta) {
  check_image_map("synthesize_haze_depth_backward", J, depth, A);
  TORCH_CHECK(beta.numel() == A.numel() && beta.scalar_type() == A.scalar_type(),
              "fastdehaze::synthesize_haze_depth_backward: beta must be [B,C] like A");
  c10::cuda::CUDAGuard guard(J.device());
  auto gc = grad.contiguous(), Jc = J.contiguous(), dc = depth.contiguous(), Ac = A.contiguous(), bc = beta.contiguous();
  const int64_t B = J.size(0), C = J.size(1), HW = J.size(2) * J.size(3);
  auto gJ = grad_like(Jc, needs_J), gd = grad_like(dc, needs_depth);
  auto gA = grad_param(B, C, A, needs_A), gb = grad_param(B, C, beta, needs_beta);
  if (Jc.numel() == 0 || !(needs_J || needs_depth || needs_A || needs_beta)) {
    if (needs_depth) gd.zero_();
    return {gJ, gd, gA, gb};
  }
  auto work = at::empty({asm_work_elems(B, C, HW, (needs_A || needs_beta) ? 2 : 0)}, A.options());
  auto stream = c10::cuda::getCurrentCUDAStream(J.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "synthesize_haze_depth_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    synthesize_haze_depth_backward_cuda_launch<T>(ptr<const T>(gc), ptr<const T>(Jc), ptr<const T>(dc),
                                                  ptr<const opmath<T>>(Ac), ptr<const opmath<T>>(bc), ptr<T>(gJ),
                                                  ptr<T>(gd), ptr<opmath<T>>(gA), ptr<opmath<T>>(gb), B, C, HW,
                                                  dc.size(1), ptr<opmath<T>>(work), stream);
  });
  check_launch("synthesize_haze_depth_backward");
  return {gJ, gd, gA, gb};
}

void check_depth_beta(const char* op, const at::Tensor& depth, const at::Tensor& beta) {
  check_cuda(depth, op);
  TORCH_CHECK(depth.dim() == 4 && beta.dim() == 2 && beta.size(0) == depth.size(0) &&
                  (depth.size(1) == 1 || depth.size(1) == beta.size(1)),
              "fastdehaze::", op, ": depth must be [B,1|C,H,W] and beta [B,C]");
}

at::Tensor transmission_from_depth_cuda(const at::Tensor& depth, const at::Tensor& beta) {
  check_depth_beta("transmission_from_depth", depth, beta);
  c10::cuda::CUDAGuard guard(depth.device());
  auto dc = depth.contiguous(), bc = beta.contiguous();
  const int64_t B = depth.size(0), C = beta.size(1), HW = depth.size(2) * depth.size(3);
  auto out = at::empty({B, C, depth.size(2), depth.size(3)}, depth.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream(depth.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, depth.scalar_type(), "transmission_from_depth_cuda", [&] {
    using T = cuda_t<scalar_t>;
    transmission_from_depth_cuda_launch<T>(ptr<const T>(dc), ptr<const opmath<T>>(bc), ptr<T>(out), B, C, HW,
                                           dc.size(1), stream);
  });
  check_launch("transmission_from_depth");
  return out;
}

std::tuple<at::Tensor, at::Tensor> transmission_from_depth_backward_cuda(const at::Tensor& grad, const at::Tensor& depth,
                                                                         const at::Tensor& beta, bool needs_depth,
                                                                         bool needs_beta) {
  check_depth_beta("transmission_from_depth_backward", depth, beta);
  c10::cuda::CUDAGuard guard(depth.device());
  auto gc = grad.contiguous(), dc = depth.contiguous(), bc = beta.contiguous();
  const int64_t B = depth.size(0), C = beta.size(1), HW = depth.size(2) * depth.size(3);
  TORCH_CHECK(gc.numel() == B * C * HW, "fastdehaze::transmission_from_depth_backward: grad must be [B,C,H,W]");
  auto gd = grad_like(dc, needs_depth), gb = grad_param(B, C, beta, needs_beta);
  if (gc.numel() == 0 || !(needs_depth || needs_beta)) {
    if (needs_depth) gd.zero_();
    return {gd, gb};
  }
  auto work = at::empty({asm_work_elems(B, C, HW, needs_beta ? 1 : 0)}, beta.options());
  auto stream = c10::cuda::getCurrentCUDAStream(depth.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, depth.scalar_type(), "transmission_from_depth_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    transmission_from_depth_backward_cuda_launch<T>(ptr<const T>(gc), ptr<const T>(dc), ptr<const opmath<T>>(bc),
                                                    ptr<T>(gd), ptr<opmath<T>>(gb), B, C, HW, dc.size(1), ptr<opmath<T>>(work), stream);
  });
  check_launch("transmission_from_depth_backward");
  return {gd, gb};
}

at::Tensor recompose_k_cuda(const at::Tensor& I, const at::Tensor& K, const at::Tensor& bias) {
  check_image_map("recompose_k", I, K, bias);
  c10::cuda::CUDAGuard guard(I.device());
  auto Ic = I.contiguous(), Kc = K.contiguous(), bc = bias.contiguous();
  auto out = at::empty_like(Ic, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t B = I.size(0), C = I.size(1), HW = I.size(2) * I.size(3);
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recompose_k_cuda", [&] {
    using T = cuda_t<scalar_t>;
    recompose_k_cuda_launch<T>(ptr<const T>(Ic), ptr<const T>(Kc), ptr<const opmath<T>>(bc), ptr<T>(out), B, C, HW,
                               Kc.size(1), stream);
  });
  check_launch("recompose_k");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recompose_k_backward_cuda(const at::Tensor& grad, const at::Tensor& I,
                                                                         const at::Tensor& K, const at::Tensor& bias,
                                                                         bool needs_I, bool needs_K, bool needs_b) {
  check_image_map("recompose_k_backward", I, K, bias);
  c10::cuda::CUDAGuard guard(I.device());
  auto gc = grad.contiguous(), Ic = I.contiguous(), Kc = K.contiguous();
  const int64_t B = I.size(0), C = I.size(1), HW = I.size(2) * I.size(3);
  auto gI = grad_like(Ic, needs_I), gK = grad_like(Kc, needs_K), gb = grad_param(B, C, bias, needs_b);
  if (Ic.numel() == 0 || !(needs_I || needs_K || needs_b)) {
    if (needs_K) gK.zero_();
    return {gI, gK, gb};
  }
  auto work = at::empty({asm_work_elems(B, C, HW, needs_b ? 1 : 0)}, bias.options());
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "recompose_k_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    recompose_k_backward_cuda_launch<T>(ptr<const T>(gc), ptr<const T>(Ic), ptr<const T>(Kc), ptr<T>(gI), ptr<T>(gK),
                                        ptr<opmath<T>>(gb), B, C, HW, Kc.size(1), ptr<opmath<T>>(work), stream);
  });
  check_launch("recompose_k_backward");
  return {gI, gK, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CUDA, m) {
  m.impl("recover", &recover_cuda);
  m.impl("recover_backward", &recover_backward_cuda);
  m.impl("synthesize_haze", &synthesize_haze_cuda);
  m.impl("synthesize_haze_backward", &synthesize_haze_backward_cuda);
  m.impl("synthesize_haze_depth", &synthesize_haze_depth_cuda);
  m.impl("synthesize_haze_depth_backward", &synthesize_haze_depth_backward_cuda);
  m.impl("transmission_from_depth", &transmission_from_depth_cuda);
  m.impl("transmission_from_depth_backward", &transmission_from_depth_backward_cuda);
  m.impl("recompose_k", &recompose_k_cuda);
  m.impl("recompose_k_backward", &recompose_k_backward_cuda);
}

}  // namespace fastdehaze

FD_PYTHON_MODULE(_cuda_asm)
