// Schemas of the IICL patch ops (SPEC section 3). The Python layer (fastdehaze/ops/patch.py)
// validates every argument (patch/stride/k ranges, measure, corner ranges on CPU) before calling
// these; the kernels TORCH_CHECK only what would otherwise read out of bounds. The Triton
// variants (`<name>_triton`) are defined in Python with the same schemas.
#include <torch/library.h>
#include "fastdehaze/common.h"

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // x [B,C,H,W] (any floating dtype); measure: 0 luma (C == 3), 1 mean, 2 dark (min), 3 max.
  // -> bright_index [B,k] int64, bright_score [B,k] (float64 for float64 x, else float32),
  //    bright_corner [B,k,2] int64 (y, x), then the same three for the dark order.
  m.def("patch_brightness_rank(Tensor x, int patch, int stride, int k, int measure) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // x [B,C,H,W]; corners [B,k,2] int64 (y, x) -> [B,k,C,patch,patch] in x's dtype.
  m.def("gather_patches(Tensor x, Tensor corners, int patch) -> Tensor");
  // grad [B,k,C,patch,patch]; corners [B,k,2] int64 -> grad_x [B,C,H,W] (overlaps add up).
  m.def("gather_patches_backward(Tensor grad, Tensor corners, SymInt H, SymInt W) -> Tensor");
}

FD_PYTHON_MODULE(_C_patch)
