// Schemas of the atmospheric scattering model ops (SPEC section 1). The Python layer
// (fastdehaze/ops/asm.py) normalises the broadcastable parameters (A, t0, beta, b) to
// contiguous [B, C] tensors in the compute dtype (float32 for half inputs, float64 for
// float64) before calling these, and validates arguments. The Triton variants
// (`<name>_triton`) are defined in Python with the same schemas (tests/test_asm.py
// checks that they match).
#include <torch/library.h>
#include "fastdehaze/common.h"
#include "fastdehaze/grid_ops.h"

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // I [B,C,H,W]; t [B,1|C,H,W] (same dtype as I); A, t0 [B,C] compute dtype.
  m.def("recover(Tensor I, Tensor t, Tensor A, Tensor t0, float lo, float hi, bool clamp) -> Tensor");
  // -> (grad_I [B,C,H,W], grad_t like t, grad_A [B,C] compute dtype); a gradient whose
  // needs_* flag is false comes back as an empty [0] tensor.
  m.def("recover_backward(Tensor grad, Tensor I, Tensor t, Tensor A, Tensor t0, float lo, float hi, bool clamp, bool needs_I, bool needs_t, bool needs_A) -> (Tensor, Tensor, Tensor)");

  // Synthesis I = (J - A) t + A. J [B,C,H,W]; t [B,1|C,H,W] (J's dtype); A [B,C] compute dtype.
  m.def("synthesize_haze(Tensor J, Tensor t, Tensor A) -> Tensor");
  // -> (grad_J like J, grad_t like t, grad_A [B,C] compute dtype); empty [0] where not needed.
  m.def("synthesize_haze_backward(Tensor grad, Tensor J, Tensor t, Tensor A, bool needs_J, bool needs_t, bool needs_A) -> (Tensor, Tensor, Tensor)");

  // Synthesis from depth in one pass: I = (J - A) t + A, t = exp(-beta d). J [B,C,H,W];
  // depth [B,1|C,H,W] (J's dtype); A, beta [B,C] compute dtype.
  m.def("synthesize_haze_depth(Tensor J, Tensor depth, Tensor A, Tensor beta) -> Tensor");
  // -> (grad_J, grad_depth like depth, grad_A [B,C], grad_beta [B,C]); empty [0] where not needed.
  m.def("synthesize_haze_depth_backward(Tensor grad, Tensor J, Tensor depth, Tensor A, Tensor beta, bool needs_J, bool needs_depth, bool needs_A, bool needs_beta) -> (Tensor, Tensor, Tensor, Tensor)");

  // t = exp(-beta d). depth [B,1|C,H,W]; beta [B,C] compute dtype; -> t [B,C,H,W] in depth's dtype
  // (C = beta's channel count: a one-channel depth with per-channel beta gives per-channel t).
  m.def("transmission_from_depth(Tensor depth, Tensor beta) -> Tensor");
  // -> (grad_depth like depth, grad_beta [B,C] compute dtype); empty [0] where not needed.
  m.def("transmission_from_depth_backward(Tensor grad, Tensor depth, Tensor beta, bool needs_depth, bool needs_beta) -> (Tensor, Tensor)");

  // AOD-Net recomposition J = K I - K + b. I [B,C,H,W]; K [B,1|C,H,W] (I's dtype); b [B,C] compute dtype.
  m.def("recompose_k(Tensor I, Tensor K, Tensor b) -> Tensor");
  // -> (grad_I like I, grad_K like K, grad_b [B,C] compute dtype); empty [0] where not needed.
  // Test hooks of the CUDA launch plans (fastdehaze/grid.h, grid_ops.h; tests/test_cuda_grid.py):
  // host code shared with the CUDA launchers, compiled into this CPU extension.
  m.def("_launch_plan(str kernel, int[] sizes, int max_x=2147483647) -> int[]", &fastdehaze::grid::launch_plan_op);
  m.def("_launch_plan_visits(str kernel, int[] sizes, int max_x=2147483647) -> int[]",
        &fastdehaze::grid::launch_plan_visits_op);
  m.def("_launch_plan_cover(str kernel, int[] sizes, int max_x=2147483647) -> int[]",
        &fastdehaze::grid::launch_plan_cover_op);

  m.def("recompose_k_backward(Tensor grad, Tensor I, Tensor K, Tensor b, bool needs_I, bool needs_K, bool needs_b) -> (Tensor, Tensor, Tensor)");
}

FD_PYTHON_MODULE(_C_asm)
