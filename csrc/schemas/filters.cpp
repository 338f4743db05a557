// Schemas of the box and guided filters (SPEC section 2). The Python layer
// (fastdehaze/ops/filters.py) validates the arguments; the Triton variants (`<name>_triton`)
// are defined in Python with the same schemas.
#include <torch/library.h>
#include "fastdehaze/common.h"

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // x [B,C,H,W] -> border-normalised (2r+1)^2 box mean, r >= 1.
  m.def("box_filter(Tensor x, int r) -> Tensor");
  // Adjoint of box_filter: the box sum of grad / count (the gradient w.r.t. x).
  m.def("box_filter_backward(Tensor grad, int r) -> Tensor");
  // I [B,1|3,H,W] guide, p [B,C,H,W] source, same dtype; -> q like p (He et al. 2013), eps > 0.
  // No autograd of its own: the Python layer composes differentiable box filters when a
  // gradient is needed.
  m.def("guided_filter(Tensor I, Tensor p, int r, float eps) -> Tensor");
}

FD_PYTHON_MODULE(_C_filters)
