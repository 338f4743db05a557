// Registers the CUDA kernels of csrc/cuda/depth_difference.cu for the depth-difference ops
// (schemas: csrc/schemas/depth_difference.cpp). Every launch runs on the current stream of the
// input's device, under a device guard; nothing here synchronises with the host.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <limits>

#include "depth_difference.cuh"
#include "fastdehaze/cuda_register.h"

namespace fastdehaze {
namespace {

at::ScalarType compute_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor workspace(const at::Tensor& x, int64_t B, int64_t C, int64_t HW) {
  return at::empty({depth_difference_workspace(B, C, HW)}, x.options().dtype(compute_type(x)));
}

std::tuple<at::Tensor, at::Tensor> dpw_cuda(const at::Tensor& diff, double eps, bool normalize) {
  check_cuda(diff, "diff");
  TORCH_CHECK(diff.dim() == 4, "fastdehaze::difference_perception_weight: diff must be [B,C,H,W]");
  c10::cuda::CUDAGuard guard(diff.device());
  auto d = diff.contiguous();
  const int64_t B = d.size(0), C = d.size(1), H = d.size(2), Wd = d.size(3), HW = H * Wd;
  auto W = at::empty({B, 1, H, Wd}, d.options());
  auto lse = at::empty({B}, d.options().dtype(compute_type(d)));
  if (B == 0) return {W, lse};
  auto work = workspace(d, B, C, HW);
  auto stream = c10::cuda::getCurrentCUDAStream(d.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "difference_perception_weight_cuda", [&] {
    using T = cuda_t<scalar_t>;
    difference_perception_weight_cuda_launch<T>(ptr<const T>(d), ptr<T>(W), ptr<opmath<T>>(lse), ptr<opmath<T>>(work), B,
                                                C, HW, eps, normalize, stream);
  });
  check_launch("difference_perception_weight");
  return {W, lse};
}

at::Tensor dpw_backward_cuda(const at::Tensor& grad, const at::Tensor& diff, const at::Tensor& lse, bool normalize) {
  check_cuda(diff, "diff");
  TORCH_CHECK(diff.dim() == 4, "fastdehaze::difference_perception_weight_backward: diff must be [B,C,H,W]");
  c10::cuda::CUDAGuard guard(diff.device());
  auto d = diff.contiguous();
  const int64_t B = d.size(0), C = d.size(1), HW = d.size(2) * d.size(3);
  TORCH_CHECK(grad.numel() == B * HW && lse.numel() == B,
              "fastdehaze::difference_perception_weight_backward: grad must be [B,1,H,W] and lse [B]");
  TORCH_CHECK(lse.scalar_type() == compute_type(d), "fastdehaze: lse has the wrong dtype");
  auto g = grad.to(d.scalar_type()).contiguous();
  auto lc = lse.contiguous();
  auto gd = at::empty_like(d, at::MemoryFormat::Contiguous);
  if (gd.numel() == 0) return gd;
  auto work = workspace(d, B, C, HW);
  auto stream = c10::cuda::getCurrentCUDAStream(d.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "difference_perception_weight_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    difference_perception_weight_backward_cuda_launch<T>(ptr<const T>(g), ptr<const T>(d), ptr<const opmath<T>>(lc),
                                                         ptr<T>(gd), ptr<opmath<T>>(work), B, C, HW, normalize, stream);
  });
  check_launch("difference_perception_weight_backward");
  return gd;
}

void check_loss_inputs(const at::Tensor& dh, const at::Tensor& cl, const at::Tensor& Dp, const at::Tensor& Dt) {
  check_cuda(dh, "dehazed");
  check_cuda(cl, "clear");
  check_cuda(Dp, "depth_pred");
  check_cuda(Dt, "depth_target");
  TORCH_CHECK(dh.dim() == 4 && cl.sizes() == dh.sizes(), "fastdehaze::depth_difference_loss: clear must match dehazed [B,C,H,W]");
  TORCH_CHECK(Dp.dim() == 4 && Dp.size(0) == dh.size(0) && Dp.size(1) == 1 && Dp.size(2) == dh.size(2) &&
                  Dp.size(3) == dh.size(3) && Dt.sizes() == Dp.sizes(),
              "fastdehaze::depth_difference_loss: depth_pred and depth_target must be [B,1,H,W] matching dehazed");
  const auto st = dh.scalar_type();
  TORCH_CHECK(cl.scalar_type() == st && Dp.scalar_type() == st && Dt.scalar_type() == st,
              "fastdehaze::depth_difference_loss: all inputs must have one dtype");
}

std::tuple<at::Tensor, at::Tensor> ddl_cuda(const at::Tensor& dehazed, const at::Tensor& clear,
                                            const at::Tensor& depth_pred, const at::Tensor& depth_target, double eps) {
  check_loss_inputs(dehazed, clear, depth_pred, depth_target);
  c10::cuda::CUDAGuard guard(dehazed.device());
  auto dh = dehazed.contiguous(), cl = clear.contiguous(), Dp = depth_pred.contiguous(), Dt = depth_target.contiguous();
  const int64_t B = dh.size(0), C = dh.size(1), HW = dh.size(2) * dh.size(3);
  auto loss = at::empty({}, dh.options().dtype(compute_type(dh)));
  auto stats = at::empty({B, 2}, dh.options().dtype(compute_type(dh)));
  if (B * HW == 0) {
    loss.fill_(std::numeric_limits<double>::quiet_NaN());  // the mean of nothing, as F.l1_loss
    stats.zero_();
    return {loss, stats};
  }
  auto work = workspace(dh, B, C, HW);
  auto stream = c10::cuda::getCurrentCUDAStream(dh.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dh.scalar_type(), "depth_difference_loss_cuda", [&] {
    using T = cuda_t<scalar_t>;
    depth_difference_loss_cuda_launch<T>(ptr<const T>(dh), ptr<const T>(cl), ptr<const T>(Dp), ptr<const T>(Dt),
                                         ptr<opmath<T>>(loss), ptr<opmath<T>>(stats), ptr<opmath<T>>(work), B, C, HW,
                                         eps, stream);
  });
  check_launch("depth_difference_loss");
  return {loss, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ddl_backward_cuda(
    const at::Tensor& grad, const at::Tensor& dehazed, const at::Tensor& clear, const at::Tensor& depth_pred,
    const at::Tensor& depth_target, const at::Tensor& stats, double eps, bool needs_dehazed, bool needs_clear,
    bool needs_pred, bool needs_target) {
  check_loss_inputs(dehazed, clear, depth_pred, depth_target);
  c10::cuda::CUDAGuard guard(dehazed.device());
  auto dh = dehazed.contiguous(), cl = clear.contiguous(), Dp = depth_pred.contiguous(), Dt = depth_target.contiguous();
  const int64_t B = dh.size(0), C = dh.size(1), HW = dh.size(2) * dh.size(3);
  auto mk = [](bool need, const at::Tensor& like) {
    return need ? at::empty_like(like, at::MemoryFormat::Contiguous) : at::empty({0}, like.options());
  };
  auto gh = mk(needs_dehazed, dh), gc = mk(needs_clear, cl), gp = mk(needs_pred, Dp), gt = mk(needs_target, Dt);
  if (B * HW == 0 || !(needs_dehazed || needs_clear || needs_pred || needs_target)) return {gh, gc, gp, gt};
  TORCH_CHECK(stats.numel() == B * 2 && stats.scalar_type() == compute_type(dh),
              "fastdehaze::depth_difference_loss_backward: stats must be [B,2] in the compute dtype");
  auto g = grad.to(compute_type(dh)).contiguous();
  auto sc = stats.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream(dh.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dh.scalar_type(), "depth_difference_loss_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    depth_difference_loss_backward_cuda_launch<T>(ptr<const opmath<T>>(g), ptr<const T>(dh), ptr<const T>(cl),
                                                  ptr<const T>(Dp), ptr<const T>(Dt), ptr<const opmath<T>>(sc),
                                                  ptr<T>(gh), ptr<T>(gc), ptr<T>(gp), ptr<T>(gt), B, C, HW, eps,
                                                  stream);
  });
  check_launch("depth_difference_loss_backward");
  return {gh, gc, gp, gt};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CUDA, m) {
  m.impl("difference_perception_weight", &dpw_cuda);
  m.impl("difference_perception_weight_backward", &dpw_backward_cuda);
  m.impl("depth_difference_loss", &ddl_cuda);
  m.impl("depth_difference_loss_backward", &ddl_backward_cuda);
}

}  // namespace fastdehaze

FD_PYTHON_MODULE(_cuda_depth_difference)
