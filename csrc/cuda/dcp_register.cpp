// Registers the CUDA kernels of csrc/cuda/dcp.cu for the dark channel prior ops (schemas:
// csrc/schemas/dcp.cpp). Every launch runs on the current stream of the input's device, under a
// device guard; scratch buffers come from the caching allocator. dehaze_dcp has no CUDA kernel:
// on CUDA the Python layer chains these ops, the guided filter and recover.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>

#include "dcp.cuh"
#include "fastdehaze/cuda_register.h"

namespace fastdehaze {
namespace {

at::ScalarType compute_type(const at::Tensor& I) { return I.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_args(const at::Tensor& I, int64_t patch, const char* op) {
  check_cuda(I, "I");
  TORCH_CHECK(I.dim() == 4, "fastdehaze::", op, ": I must be [B,C,H,W]");
  TORCH_CHECK(patch > 0 && patch % 2 == 1, "fastdehaze::", op, ": patch must be a positive odd integer");
  TORCH_CHECK(I.size(2) < (int64_t(1) << 29) && I.size(3) < (int64_t(1) << 29), "fastdehaze::", op,
              ": H and W must be < 2^29 on CUDA (int32 line positions)");
}

at::Tensor window_cuda(const at::Tensor& I, int64_t patch, bool is_max, const at::Tensor* A, double omega,
                       const char* op) {
  check_args(I, patch, op);
  c10::cuda::CUDAGuard guard(I.device());
  auto Ic = I.contiguous();
  const int64_t B = I.size(0), C = I.size(1), H = I.size(2), W = I.size(3);
  auto out = at::empty({B, 1, H, W}, I.options());
  if (out.numel() == 0) return out;
  auto opt = I.options().dtype(compute_type(I));
  auto pre = at::empty({B * H * W}, opt), rows = at::empty({B * H * W}, opt), hv = at::empty({B * H * W}, opt);
  at::Tensor Ac;
  if (A) {
    Ac = A->contiguous();
    TORCH_CHECK(Ac.numel() == B * C && Ac.scalar_type() == compute_type(I), "fastdehaze::", op,
                ": A must be [B,C] in the compute dtype");
  }
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "dcp_window_cuda", [&] {
    using T = cuda_t<scalar_t>;
    channel_window_cuda_launch<T>(ptr<const T>(Ic), A ? ptr<const opmath<T>>(Ac) : nullptr, omega, is_max, B, C, H, W,
                                  patch, ptr<opmath<T>>(pre), ptr<opmath<T>>(rows), ptr<opmath<T>>(hv), nullptr,
                                  nullptr, nullptr, nullptr, out.data_ptr(), true, stream);
  });
  check_launch(op);
  return out;
}

at::Tensor window_backward_cuda(const at::Tensor& grad, const at::Tensor& I, int64_t patch, bool is_max,
                                const char* op) {
  check_args(I, patch, op);
  c10::cuda::CUDAGuard guard(I.device());
  auto Ic = I.contiguous(), gc = grad.contiguous();
  const int64_t B = I.size(0), C = I.size(1), H = I.size(2), W = I.size(3), n = B * H * W;
  TORCH_CHECK(gc.numel() == n, "fastdehaze::", op, ": grad must be [B,1,H,W]");
  auto gI = at::empty({B, C, H, W}, I.options());
  if (Ic.numel() == 0) return gI.zero_();
  auto opt = I.options().dtype(compute_type(I));
  auto iopt = I.options().dtype(at::kInt);
  auto pre = at::empty({n}, opt), rows = at::empty({n}, opt), hv = at::empty({n}, opt), vals = at::empty({n}, opt);
  auto ha = at::empty({n}, iopt), rows_a = at::empty({n}, iopt), cols_a = at::empty({n}, iopt),
       chan = at::empty({n}, iopt);
  auto acc = at::empty({n}, opt);  // column-adjoint scratch of the gather backward
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "dcp_window_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    channel_window_cuda_launch<T>(ptr<const T>(Ic), nullptr, 0.0, is_max, B, C, H, W, patch, ptr<opmath<T>>(pre),
                                  ptr<opmath<T>>(rows), ptr<opmath<T>>(hv), ptr<int32_t>(ha), ptr<int32_t>(rows_a),
                                  ptr<int32_t>(cols_a), ptr<int32_t>(chan), vals.data_ptr(), false, stream);
    channel_scatter_cuda_launch<T>(ptr<const T>(gc), ptr<const int32_t>(rows_a), ptr<const int32_t>(cols_a),
                                   ptr<const int32_t>(chan), ptr<opmath<T>>(acc), ptr<T>(gI), B, C, H, W, patch,
                                   stream);
  });
  check_launch(op);
  return gI;
}

at::Tensor dark_channel_cuda(const at::Tensor& I, int64_t patch) {
  return window_cuda(I, patch, false, nullptr, 0.0, "dark_channel");
}
at::Tensor bright_channel_cuda(const at::Tensor& I, int64_t patch) {
  return window_cuda(I, patch, true, nullptr, 0.0, "bright_channel");
}
at::Tensor transmission_cuda(const at::Tensor& I, const at::Tensor& A, double omega, int64_t patch) {
  return window_cuda(I, patch, false, &A, omega, "transmission");
}
at::Tensor dark_channel_backward_cuda(const at::Tensor& grad, const at::Tensor& I, int64_t patch) {
  return window_backward_cuda(grad, I, patch, false, "dark_channel_backward");
}
at::Tensor bright_channel_backward_cuda(const at::Tensor& grad, const at::Tensor& I, int64_t patch) {
  return window_backward_cuda(grad, I, patch, true, "bright_channel_backward");
}

at::Tensor atmospheric_light_cuda(const at::Tensor& I, const at::Tensor& dark, int64_t k) {
  check_cuda(I, "I");
  TORCH_CHECK(I.dim() == 4 && k >= 1, "fastdehaze::atmospheric_light: bad arguments");
  c10::cuda::CUDAGuard guard(I.device());
  auto Ic = I.contiguous(), dc = dark.contiguous();
  const int64_t B = I.size(0), C = I.size(1), HW = I.size(2) * I.size(3);
  TORCH_CHECK(dc.numel() == B * HW && dc.scalar_type() == I.scalar_type(),
              "fastdehaze::atmospheric_light: dark must be [B,1,H,W] with I's dtype");
  auto A = at::zeros({B, C}, I.options().dtype(compute_type(I)));
  if (B == 0) return A;
  if (HW == 0) return A.fill_(std::numeric_limits<double>::quiet_NaN());
  auto work = at::zeros({(atmospheric_light_workspace_bytes(B, C, HW) + 7) / 8}, I.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream(I.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "atmospheric_light_cuda", [&] {
    using T = cuda_t<scalar_t>;
    atmospheric_light_cuda_launch<T>(ptr<const T>(Ic), ptr<const T>(dc), ptr<opmath<T>>(A), B, C, HW, k,
                                     work.data_ptr(), stream);
  });
  check_launch("atmospheric_light");
  return A;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CUDA, m) {
  m.impl("dark_channel", &dark_channel_cuda);
  m.impl("bright_channel", &bright_channel_cuda);
  m.impl("dark_channel_backward", &dark_channel_backward_cuda);
  m.impl("bright_channel_backward", &bright_channel_backward_cuda);
  m.impl("atmospheric_light", &atmospheric_light_cuda);
  m.impl("transmission", &transmission_cuda);
}

}  // namespace fastdehaze

FD_PYTHON_MODULE(_cuda_dcp)
