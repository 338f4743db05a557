// Schemas of the atmospheric scattering model ops (SPEC section 1). The Python layer
// (fastdehaze/ops/asm.py) normalises the broadcastable parameters (A, t0, beta, b) to
// contiguous [B, C] tensors in the compute dtype (float32 for half inputs, float64 for
// float64) before calling these, and validates arguments. The Triton variants
// (`<name>_triton`) are defined in Python with the same schemas (tests/test_schemas.py
// checks that they match).
#include <torch/library.h>
#include "fastdehaze/common.h"

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // I [B,C,H,W]; t [B,1|C,H,W] (same dtype as I); A, t0 [B,C] compute dtype.
  m.def("recover(Tensor I, Tensor t, Tensor A, Tensor t0, float lo, float hi, bool clamp) -> Tensor");
  // -> (grad_I [B,C,H,W], grad_t like t, grad_A [B,C] compute dtype); a gradient whose
  // needs_* flag is false comes back as an empty [0] tensor.
  m.def("recover_backward(Tensor grad, Tensor I, Tensor t, Tensor A, Tensor t0, float lo, float hi, bool clamp, bool needs_I, bool needs_t, bool needs_A) -> (Tensor, Tensor, Tensor)");
}

FD_PYTHON_MODULE(_C_asm)
