// Registers the CUDA kernels of csrc/cuda/filters.cu (schemas: csrc/schemas/filters.cpp).
// Every launch runs on the current stream of the input's device, under a device guard.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "filters.cuh"
#include "fastdehaze/cuda_register.h"

namespace fastdehaze {
namespace {

at::Tensor box_common_cuda(const at::Tensor& x, int64_t r, bool adjoint) {
  check_cuda(x, "x");
  TORCH_CHECK(x.dim() == 4 && r >= 0, "fastdehaze::box_filter: x must be [B,C,H,W] and r >= 0");
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto out = at::empty_like(xc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  auto tmp = at::empty({xc.numel()}, xc.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_filter_cuda", [&] {
    using T = cuda_t<scalar_t>;
    box_filter_cuda_launch<T>(ptr<const T>(xc), ptr<T>(out), tmp.data_ptr<double>(), x.size(0) * x.size(1), x.size(2),
                              x.size(3), r, adjoint, stream);
  });
  check_launch(adjoint ? "box_filter_backward" : "box_filter");
  return out;
}

at::Tensor box_filter_cuda(const at::Tensor& x, int64_t r) { return box_common_cuda(x, r, false); }
at::Tensor box_filter_backward_cuda(const at::Tensor& g, int64_t r) { return box_common_cuda(g, r, true); }

at::Tensor guided_filter_cuda(const at::Tensor& I, const at::Tensor& p, int64_t r, double eps) {
  check_cuda(I, "I");
  check_cuda(p, "p");
  TORCH_CHECK(I.dim() == 4 && p.dim() == 4 && (I.size(1) == 1 || I.size(1) == 3) && I.size(0) == p.size(0) &&
                  I.size(2) == p.size(2) && I.size(3) == p.size(3) && r >= 0,
              "fastdehaze::guided_filter: bad shapes");
  TORCH_CHECK(I.scalar_type() == p.scalar_type(), "fastdehaze::guided_filter: I must have p's dtype");
  c10::cuda::CUDAGuard guard(p.device());
  auto Ic = I.contiguous(), pc = p.contiguous();
  auto out = at::empty_like(pc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t B = p.size(0), C = p.size(1), G = I.size(1), H = p.size(2), W = p.size(3);
  const int64_t K = G == 1 ? 4 : 13, KA = G == 1 ? 2 : 4;
  const auto cdt = p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto stats = at::empty({B * C * K * H * W}, p.options().dtype(cdt));
  auto ab = at::empty({B * C * KA * H * W}, p.options().dtype(cdt));
  auto tmp = at::empty({B * C * K * H * W}, p.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream(p.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "guided_filter_cuda", [&] {
    using T = cuda_t<scalar_t>;
    guided_filter_cuda_launch<T>(ptr<const T>(Ic), ptr<const T>(pc), ptr<T>(out), ptr<opmath<T>>(stats),
                                 ptr<opmath<T>>(ab), tmp.data_ptr<double>(), B, C, G, H, W, r, eps, stream);
  });
  check_launch("guided_filter");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CUDA, m) {
  m.impl("box_filter", &box_filter_cuda);
  m.impl("box_filter_backward", &box_filter_backward_cuda);
  m.impl("guided_filter", &guided_filter_cuda);
}

}  // namespace fastdehaze

FD_PYTHON_MODULE(_cuda_filters)
