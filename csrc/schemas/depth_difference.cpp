// Schemas of the depth-difference ops (DCMPNet "difference perception", SPEC section 5). The
// Python layer (fastdehaze/ops/depth_difference.py) validates the arguments and casts the four
// loss inputs to one dtype before calling these. The Triton variants (`<name>_triton`) are
// defined in Python with the same schemas.
#include <torch/library.h>
#include "fastdehaze/common.h"

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // diff [B,C,H,W] -> (W [B,1,H,W] in diff's dtype, lse [B] compute dtype: the log-sum-exp of
  // each image's C*H*W values, saved for the backward).
  m.def("difference_perception_weight(Tensor diff, float eps, bool normalize) -> (Tensor, Tensor)");
  // grad [B,1,H,W] -> grad_diff [B,C,H,W].
  m.def("difference_perception_weight_backward(Tensor grad, Tensor diff, Tensor lse, bool normalize) -> Tensor");
  // dehazed, clear [B,C,H,W]; depth_pred, depth_target [B,1,H,W], all one dtype ->
  // (loss 0-d compute dtype, stats [B,2] compute dtype: per image lse and
  //  dot = 1/N sum_p S_p dL/dW_p, which makes the backward a single pass).
  m.def("depth_difference_loss(Tensor dehazed, Tensor clear, Tensor depth_pred, Tensor depth_target, float eps) -> (Tensor, Tensor)");
  // grad 0-d compute dtype -> (grad_dehazed, grad_clear, grad_depth_pred, grad_depth_target); a
  // gradient whose needs_* flag is false comes back as an empty [0] tensor.
  m.def("depth_difference_loss_backward(Tensor grad, Tensor dehazed, Tensor clear, Tensor depth_pred, Tensor depth_target, Tensor stats, float eps, bool needs_dehazed, bool needs_clear, bool needs_pred, bool needs_target) -> (Tensor, Tensor, Tensor, Tensor)");
}

FD_PYTHON_MODULE(_C_depth_difference)
