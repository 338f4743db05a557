// Registers the CUDA kernels of csrc/cuda/contrastive.cu for the contrastive distance ops
// (schemas: csrc/schemas/contrastive.cpp). Every launch runs on the current stream of the
// anchors' device, under a device guard; nothing here waits for the device (the incoming
// gradient is read by the kernel, not with .item()). Layers are packed into kernel-parameter
// tables of at most kContrastiveMaxLayers layers / kContrastiveMaxNegPtrs negatives: one launch
// per table (one in practice: 5 VGG layers and up to 32 negatives).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "contrastive.cuh"
#include "fastdehaze/cuda_register.h"

namespace fastdehaze {
namespace {

at::Tensor conform(const at::Tensor& x, const at::Tensor& ref) {
  if (x.strides() == ref.strides() && x.is_non_overlapping_and_dense()) return x;
  auto y = at::empty_like(ref);
  y.copy_(x);
  return y;
}

struct Layers {
  std::vector<at::Tensor> a, p, n;
  int64_t L = 0, K = 0;
};

Layers prepare(const char* op, at::TensorList anchors, at::TensorList positives, at::TensorList negatives,
               const at::Tensor& w, bool ablation, const std::vector<at::Tensor>* layout) {
  Layers s;
  s.L = static_cast<int64_t>(anchors.size());
  TORCH_CHECK(s.L >= 1, "fastdehaze::", op, ": at least one layer is needed");
  TORCH_CHECK(static_cast<int64_t>(positives.size()) == s.L, "fastdehaze::", op, ": one positive per anchor");
  TORCH_CHECK(negatives.size() % s.L == 0, "fastdehaze::", op, ": negatives must hold K tensors per layer");
  s.K = static_cast<int64_t>(negatives.size()) / s.L;
  TORCH_CHECK(ablation || s.K >= 1, "fastdehaze::", op, ": at least one negative is needed");
  TORCH_CHECK(w.dim() == 1 && w.numel() == s.K && w.is_cuda(), "fastdehaze::", op, ": negative_weights must be [K]");
  TORCH_CHECK(s.K <= kContrastiveMaxNegPtrs, "fastdehaze::", op, ": at most ", kContrastiveMaxNegPtrs,
              " negatives on CUDA");
  const auto dt = anchors[0].scalar_type();
  for (int64_t l = 0; l < s.L; ++l) {
    const auto& a = anchors[l];
    check_cuda(a, "anchor");
    TORCH_CHECK(a.device() == anchors[0].device() && positives[l].device() == a.device(), "fastdehaze::", op,
                ": all features must be on one device");
    TORCH_CHECK(a.scalar_type() == dt && positives[l].scalar_type() == dt, "fastdehaze::", op,
                ": all features must share one dtype");
    TORCH_CHECK(positives[l].sizes() == a.sizes(), "fastdehaze::", op, ": positive must have the anchor's shape");
    const at::Tensor ref = layout ? (*layout)[l] : (a.is_non_overlapping_and_dense() ? a : a.contiguous());
    s.a.push_back(conform(a, ref));
    s.p.push_back(conform(positives[l], ref));
    for (int64_t k = 0; k < s.K; ++k) {
      const auto& n = negatives[l * s.K + k];
      TORCH_CHECK(n.sizes() == a.sizes() && n.scalar_type() == dt && n.device() == a.device(), "fastdehaze::", op,
                  ": each negative must have the anchor's shape, dtype and device");
      s.n.push_back(ablation ? n : conform(n, ref));
    }
  }
  return s;
}

// Calls fn(table, first_layer) for each table of consecutive layers that fits the parameter limits.
template <typename T, typename F>
void for_each_table(const Layers& s, const std::vector<at::Tensor>* grads, F fn) {
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(kContrastiveMaxLayers,
                                                             s.K > 0 ? kContrastiveMaxNegPtrs / s.K : kContrastiveMaxLayers));
  const int64_t be = contrastive_block_elems();
  for (int64_t l0 = 0; l0 < s.L; l0 += per) {
    ContrastiveTable<T> tab{};
    tab.L = static_cast<int>(std::min(per, s.L - l0));
    tab.K = static_cast<int>(s.K);
    tab.block0[0] = 0;
    for (int j = 0; j < tab.L; ++j) {
      const int64_t l = l0 + j;
      tab.a[j] = ptr<const T>(s.a[l]);
      tab.p[j] = ptr<const T>(s.p[l]);
      for (int64_t k = 0; k < s.K; ++k) tab.n[j * s.K + k] = ptr<const T>(s.n[l * s.K + k]);
      tab.g[j] = grads ? ptr<T>((*grads)[l]) : nullptr;
      tab.N[j] = s.a[l].numel();
      tab.block0[j + 1] = tab.block0[j] + (tab.N[j] + be - 1) / be;
    }
    TORCH_CHECK(tab.block0[tab.L] < (int64_t(1) << 31), "fastdehaze: contrastive features too large for one grid");
    fn(tab, l0);
  }
}

std::tuple<at::Tensor, at::Tensor> forward_impl(const char* op, at::TensorList anchors, at::TensorList positives,
                                                at::TensorList negatives, const at::Tensor& lw, const at::Tensor& w,
                                                double eps, bool ablation) {
  c10::cuda::CUDAGuard guard(anchors.empty() ? w.device() : anchors[0].device());
  const Layers s = prepare(op, anchors, positives, negatives, w, ablation, nullptr);
  TORCH_CHECK(lw.dim() == 1 && lw.numel() == s.L && lw.scalar_type() == w.scalar_type(), "fastdehaze::", op,
              ": layer_weights must be [L] of the compute dtype");
  const int64_t Q = 1 + s.K;
  auto sums = at::zeros({s.L, Q}, w.options().dtype(at::kDouble));
  // per-block partial sums of the two-pass (deterministic) reduction; tables run in stream order
  // and share it, so it holds the blocks of all layers (an upper bound for any one table)
  int64_t nblk_all = 0;
  for (const auto& a : s.a) nblk_all += (a.numel() + contrastive_block_elems() - 1) / contrastive_block_elems();
  auto work = at::empty({std::max<int64_t>(nblk_all, 1) * Q}, w.options().dtype(at::kDouble));
  auto dists = at::empty({s.L, Q}, w.options());
  auto term = at::empty({s.L}, w.options());
  auto lwc = lw.contiguous(), wc = w.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream(anchors[0].device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a[0].scalar_type(), "contrastive_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using op_t = opmath<T>;
    TORCH_CHECK(w.scalar_type() == (sizeof(op_t) == 8 ? at::kDouble : at::kFloat), "fastdehaze::", op,
                ": weights have the wrong compute dtype");
    for_each_table<T>(s, nullptr, [&](const ContrastiveTable<T>& tab, int64_t l0) {
      contrastive_forward_cuda_launch<T>(tab, ptr<double>(sums) + l0 * Q, ptr<double>(work), ptr<op_t>(dists) + l0 * Q,
                                         ptr<op_t>(term) + l0, ptr<const op_t>(lwc) + l0, ptr<const op_t>(wc), eps,
                                         ablation, stream);
      check_launch(op);
    });
  });
  return {term.sum(), dists};
}

std::vector<at::Tensor> backward_impl(const char* op, const at::Tensor& grad, at::TensorList anchors,
                                      at::TensorList positives, at::TensorList negatives, const at::Tensor& lw,
                                      const at::Tensor& w, const at::Tensor& dists, double eps, bool ablation) {
  c10::cuda::CUDAGuard guard(anchors[0].device());
  std::vector<at::Tensor> grads;
  for (const auto& a : anchors) grads.push_back(at::empty_like(a));
  const Layers s = prepare(op, anchors, positives, negatives, w, ablation, &grads);
  const int64_t Q = 1 + s.K;
  TORCH_CHECK(dists.dim() == 2 && dists.size(0) == s.L && dists.size(1) == Q, "fastdehaze::", op,
              ": dists must be [L, 1 + K]");
  auto dc = dists.to(w.scalar_type()).contiguous();
  auto gc = grad.to(w.scalar_type()).contiguous();
  auto lwc = lw.contiguous(), wc = w.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream(anchors[0].device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a[0].scalar_type(), "contrastive_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using op_t = opmath<T>;
    for_each_table<T>(s, &grads, [&](const ContrastiveTable<T>& tab, int64_t l0) {
      contrastive_backward_cuda_launch<T>(tab, ptr<const op_t>(gc), ptr<const op_t>(dc) + l0 * Q,
                                          ptr<const op_t>(lwc) + l0, ptr<const op_t>(wc), eps, ablation, stream);
      check_launch(op);
    });
  });
  return grads;
}

std::tuple<at::Tensor, at::Tensor> contrastive_distance_cuda(const at::Tensor& anchor, const at::Tensor& positive,
                                                             at::TensorList negatives, const at::Tensor& w,
                                                             double eps, bool ablation) {
  auto lw = at::ones({1}, w.options());
  return forward_impl("contrastive_distance", {anchor}, {positive}, negatives, lw, w, eps, ablation);
}

at::Tensor contrastive_distance_backward_cuda(const at::Tensor& grad, const at::Tensor& anchor,
                                              const at::Tensor& positive, at::TensorList negatives,
                                              const at::Tensor& w, const at::Tensor& dists, double eps,
                                              bool ablation) {
  auto lw = at::ones({1}, w.options());
  return backward_impl("contrastive_distance_backward", grad, {anchor}, {positive}, negatives, lw, w, dists, eps,
                       ablation)[0];
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_cuda(at::TensorList anchors, at::TensorList positives,
                                                         at::TensorList negatives, const at::Tensor& lw,
                                                         const at::Tensor& w, double eps, bool ablation) {
  return forward_impl("contrastive_loss", anchors, positives, negatives, lw, w, eps, ablation);
}

std::vector<at::Tensor> contrastive_loss_backward_cuda(const at::Tensor& grad, at::TensorList anchors,
                                                       at::TensorList positives, at::TensorList negatives,
                                                       const at::Tensor& lw, const at::Tensor& w,
                                                       const at::Tensor& dists, double eps, bool ablation) {
  return backward_impl("contrastive_loss_backward", grad, anchors, positives, negatives, lw, w, dists, eps, ablation);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CUDA, m) {
  m.impl("contrastive_distance", &contrastive_distance_cuda);
  m.impl("contrastive_distance_backward", &contrastive_distance_backward_cuda);
  m.impl("contrastive_loss", &contrastive_loss_cuda);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward_cuda);
}

}  // namespace fastdehaze

FD_PYTHON_MODULE(_cuda_contrastive)
