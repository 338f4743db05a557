// Registers the CUDA kernels of csrc/cuda/patch.cu for the IICL patch ops (schemas:
// csrc/schemas/patch.cpp). Every launch runs on the current stream of the input's device, under
// a device guard; no value is read back to the host.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "patch.cuh"
#include "fastdehaze/cuda_register.h"

namespace fastdehaze {
namespace {

using Tensor6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Tensor6 patch_brightness_rank_cuda(const at::Tensor& x, int64_t patch, int64_t stride, int64_t k, int64_t measure) {
  check_cuda(x, "x");
  TORCH_CHECK(x.dim() == 4, "fastdehaze::patch_brightness_rank: x must be [B,C,H,W]");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(patch >= 1 && stride >= 1 && patch <= H && patch <= W,
              "fastdehaze::patch_brightness_rank: need 1 <= patch <= min(H, W) and stride >= 1");
  TORCH_CHECK(measure >= 0 && measure <= 3 && (measure != 0 || C == 3) && C >= 1,
              "fastdehaze::patch_brightness_rank: bad measure code (luma needs 3 channels)");
  const int64_t nH = (H - patch) / stride + 1, nW = (W - patch) / stride + 1, n = nH * nW;
  TORCH_CHECK(k >= 0 && k <= n, "fastdehaze::patch_brightness_rank: need 0 <= k <= nH*nW");
  c10::cuda::CUDAGuard guard(x.device());
  const auto sdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto iopt = x.options().dtype(at::kLong);
  at::Tensor bi = at::empty({B, k}, iopt), bc = at::empty({B, k, 2}, iopt);
  at::Tensor di = at::empty({B, k}, iopt), dc = at::empty({B, k, 2}, iopt);
  at::Tensor bs = at::empty({B, k}, x.options().dtype(sdt)), ds = at::empty({B, k}, x.options().dtype(sdt));
  if (B == 0 || k == 0) return {bi, bs, bc, di, ds, dc};
  auto xc = x.contiguous();
  auto scores = at::empty({B, n}, x.options().dtype(sdt));
  const int64_t scratch_n = patch_scratch_elems(B, H, W, patch, stride, sdt == at::kDouble ? 8 : 4);
  auto scratch = at::empty({scratch_n}, x.options().dtype(sdt));
  auto stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patch_scores_cuda", [&] {
    using T = cuda_t<scalar_t>;
    patch_scores_cuda_launch<T>(ptr<const T>(xc), ptr<opmath<T>>(scores), ptr<opmath<T>>(scratch), B, C, H, W, patch,
                                stride, static_cast<int>(measure), stream);
  });
  check_launch("patch_brightness_rank (scores)");
  AT_DISPATCH_FLOATING_TYPES(sdt, "patch_select_cuda", [&] {
    patch_select_cuda_launch<scalar_t>(ptr<const scalar_t>(scores), B, n, nW, stride, k, ptr<int64_t>(bi),
                                       ptr<scalar_t>(bs), ptr<int64_t>(bc), ptr<int64_t>(di), ptr<scalar_t>(ds),
                                       ptr<int64_t>(dc), stream);
  });
  check_launch("patch_brightness_rank (select)");
  return {bi, bs, bc, di, ds, dc};
}

void check_corners(const at::Tensor& corners, int64_t B, const char* op) {
  check_cuda(corners, "corners");
  TORCH_CHECK(corners.dim() == 3 && corners.size(0) == B && corners.size(2) == 2 && corners.scalar_type() == at::kLong,
              "fastdehaze::", op, ": corners must be an int64 [B,k,2] tensor");
}

at::Tensor gather_patches_cuda(const at::Tensor& x, const at::Tensor& corners, int64_t patch) {
  check_cuda(x, "x");
  TORCH_CHECK(x.dim() == 4, "fastdehaze::gather_patches: x must be [B,C,H,W]");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_corners(corners, B, "gather_patches");
  TORCH_CHECK(patch >= 1 && patch <= H && patch <= W, "fastdehaze::gather_patches: need 1 <= patch <= min(H, W)");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t k = corners.size(1);
  auto out = at::empty({B, k, C, patch, patch}, x.options());
  if (out.numel() == 0) return out;
  auto xc = x.contiguous(), cc = corners.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gather_patches_cuda", [&] {
    using T = cuda_t<scalar_t>;
    gather_patches_cuda_launch<T>(ptr<const T>(xc), ptr<const int64_t>(cc), ptr<T>(out), B, C, H, W, k, patch, stream);
  });
  check_launch("gather_patches");
  return out;
}

at::Tensor gather_patches_backward_cuda(const at::Tensor& grad, const at::Tensor& corners, int64_t H, int64_t W) {
  check_cuda(grad, "grad");
  TORCH_CHECK(grad.dim() == 5 && grad.size(3) == grad.size(4),
              "fastdehaze::gather_patches_backward: grad must be [B,k,C,p,p]");
  const int64_t B = grad.size(0), k = grad.size(1), C = grad.size(2), p = grad.size(3);
  check_corners(corners, B, "gather_patches_backward");
  TORCH_CHECK(corners.size(1) == k, "fastdehaze::gather_patches_backward: corners and grad disagree on k");
  c10::cuda::CUDAGuard guard(grad.device());
  auto gx = at::empty({B, C, H, W}, grad.options());
  if (gx.numel() == 0) return gx;
  auto gc = grad.contiguous(), cc = corners.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream(grad.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gather_patches_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    gather_patches_backward_cuda_launch<T>(ptr<const T>(gc), ptr<const int64_t>(cc), ptr<T>(gx), B, C, H, W, k, p,
                                           stream);
  });
  check_launch("gather_patches_backward");
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CUDA, m) {
  m.impl("patch_brightness_rank", &patch_brightness_rank_cuda);
  m.impl("gather_patches", &gather_patches_cuda);
  m.impl("gather_patches_backward", &gather_patches_backward_cuda);
}

}  // namespace fastdehaze

FD_PYTHON_MODULE(_cuda_patch)
