// Schemas of the box and guided filters (SPEC section 2). The Python layer
// (fastdehaze/ops/filters.py) validates the arguments; the Triton variants (`<name>_triton`)
// are defined in Python with the same schemas.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>

#include "fastdehaze/common.h"
#include "fastdehaze/filters_math.h"

namespace {

// Host run of the CUDA box filter's row pass (filters_math::box_task, the index logic of
// csrc/cuda/filters.cu box_line_kernel; box_col_kernel runs the same task down columns) for
// tests/test_cuda_grid.py: x [L, n] float64, lines = rows, tasks run last to first.
at::Tensor box_line_tasks(const at::Tensor& x, int64_t r, bool adjoint) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kDouble, "fastdehaze::_box_line_tasks: x must be 2-D float64");
  TORCH_CHECK(r >= 0, "fastdehaze::_box_line_tasks: r must be >= 0");
  auto xc = x.contiguous();
  auto out = at::empty_like(xc);
  const int64_t L = xc.size(0), n = xc.size(1);
  const double* xp = xc.const_data_ptr<double>();
  double* op = out.mutable_data_ptr<double>();
  for (int64_t l = 0; l < L; ++l) {
    const double* xl = xp + l * n;
    double* ol = op + l * n;
    auto get = [&](int64_t i, int& bad) {
      bad = std::isfinite(xl[i]) ? 0 : 1;
      return xl[i];
    };
    auto put = [&](int64_t i, double v) { ol[i] = v; };
    for (int64_t j = fastdehaze::filters_math::box_tasks(n, r) - 1; j >= 0; --j)
      fastdehaze::filters_math::box_task(get, put, n, r, j, adjoint);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // x [B,C,H,W] -> border-normalised (2r+1)^2 box mean, r >= 1.
  m.def("box_filter(Tensor x, int r) -> Tensor");
  // Adjoint of box_filter: the box sum of grad / count (the gradient w.r.t. x).
  m.def("box_filter_backward(Tensor grad, int r) -> Tensor");
  // I [B,1|3,H,W] guide, p [B,C,H,W] source, same dtype; -> q like p (He et al. 2013), eps > 0.
  // No autograd of its own: the Python layer composes differentiable box filters when a
  // gradient is needed.
  m.def("guided_filter(Tensor I, Tensor p, int r, float eps) -> Tensor");
  // Test hook: the CUDA box filter's task-parallel line pass run on the host (box_line_tasks).
  m.def("_box_line_tasks(Tensor x, int r, bool adjoint) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) { m.impl("_box_line_tasks", &box_line_tasks); }

FD_PYTHON_MODULE(_C_filters)
