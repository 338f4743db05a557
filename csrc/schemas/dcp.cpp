// Schemas of the dark channel prior ops (SPEC section 2). The Python layer
// (fastdehaze/ops/dcp.py) validates arguments (patch a positive odd int, top/omega ranges) and
// normalises A to a contiguous [B, C] tensor of the compute dtype (float32 for half inputs,
// float64 for float64) before calling these. The Triton variants (`<name>_triton`) are
// defined in Python with the same schemas.
#include <torch/library.h>
#include "fastdehaze/common.h"

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // I [B,C,H,W] -> [B,1,H,W] (I's dtype): min (max) over channels then over the clipped window.
  m.def("dark_channel(Tensor I, int patch) -> Tensor");
  m.def("bright_channel(Tensor I, int patch) -> Tensor");
  // grad [B,1,H,W] -> grad_I [B,C,H,W]: each output's gradient to its first (row-major, lowest
  // channel) extremal input element.
  m.def("dark_channel_backward(Tensor grad, Tensor I, int patch) -> Tensor");
  m.def("bright_channel_backward(Tensor grad, Tensor I, int patch) -> Tensor");
  // I [B,C,H,W], dark [B,1,H,W] (I's dtype), k >= 1 -> A [B,C] compute dtype: mean of I over the
  // k largest dark values (stable ties, NaN largest).
  m.def("atmospheric_light(Tensor I, Tensor dark, int k) -> Tensor");
  // I [B,C,H,W], A [B,C] compute dtype -> 1 - omega * dark_channel(I / max(A, 1e-6)) [B,1,H,W].
  m.def("transmission(Tensor I, Tensor A, float omega, int patch) -> Tensor");
  // The whole DCP pipeline fused (CPU only): -> (J [B,C,H,W], t [B,1,H,W] (I's dtype), A [B,C]
  // compute dtype).
  m.def("dehaze_dcp(Tensor I, int patch, float omega, float top, int r, float eps, float t0) -> (Tensor, Tensor, Tensor)");
}

FD_PYTHON_MODULE(_C_dcp)
