// C++ CPU kernels of the contrastive distance ops (SPEC section 4).
//
// Layout: the features of a layer are read in the memory order of the anchor (a dense anchor,
// e.g. channels_last, is not copied; a positive or negative with other strides is copied once
// into the anchor's layout). Work is split into tasks of kChunk elements over all layers at
// once; a task sums |a - p| and each |a - n_k| over its chunk with kLanes independent
// accumulators (compute type: float for float/half/bfloat16, double for double) folded
// pairwise, and the per-task partial sums are added in double, serially in task order
// (deterministic). The backward is one more pass computing
//   dL/da = cp sign(a - p) - cn sum_k w_k sign(a - n_k)
// with per-layer coefficients from contrastive_math.h; no |a - p| temporaries are stored.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fastdehaze/contrastive_math.h"
#include "fastdehaze/cpu_utils.h"

namespace fastdehaze {
namespace {

namespace cm = contrastive_math;

constexpr int64_t kChunk = 4096;
constexpr int kLanes = 16;

// x in the memory layout of ref (same sizes): x itself when its strides already agree.
at::Tensor conform(const at::Tensor& x, const at::Tensor& ref) {
  if (x.strides() == ref.strides() && x.is_non_overlapping_and_dense()) return x;
  auto y = at::empty_like(ref);
  y.copy_(x);
  return y;
}

struct Layers {
  std::vector<at::Tensor> a, p, n;  // n[l * K + k]; all dense, in the memory order of a[l]
  std::vector<int64_t> N, task0;    // elements of layer l; first task of layer l (task0[L] = total)
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
  TORCH_CHECK(w.dim() == 1 && w.numel() == s.K, "fastdehaze::", op, ": negative_weights must be [K]");
  const auto dt = anchors[0].scalar_type();
  s.task0.push_back(0);
  for (int64_t l = 0; l < s.L; ++l) {
    const auto& a = anchors[l];
    check_cpu(a, "anchor");
    TORCH_CHECK(a.scalar_type() == dt && positives[l].scalar_type() == dt, "fastdehaze::", op,
                ": all features must share one dtype");
    TORCH_CHECK(positives[l].sizes() == a.sizes(), "fastdehaze::", op, ": positive must have the anchor's shape");
    const at::Tensor ref =
        layout ? (*layout)[l] : (a.is_non_overlapping_and_dense() ? a : a.contiguous());
    s.a.push_back(conform(a, ref));
    s.p.push_back(conform(positives[l], ref));
    for (int64_t k = 0; k < s.K; ++k) {
      const auto& n = negatives[l * s.K + k];
      TORCH_CHECK(n.sizes() == a.sizes() && n.scalar_type() == dt, "fastdehaze::", op,
                  ": each negative must have the anchor's shape and dtype");
      s.n.push_back(ablation ? n : conform(n, ref));
    }
    s.N.push_back(a.numel());
    s.task0.push_back(s.task0.back() + (a.numel() + kChunk - 1) / kChunk);
  }
  return s;
}

// sum |x - y| over n elements: kLanes accumulators, folded pairwise.
template <typename scalar_t, typename op_t>
inline op_t abs_diff_sum(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t n) {
  op_t acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = op_t(0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j)
      acc[j] += std::abs(static_cast<op_t>(x[i + j]) - static_cast<op_t>(y[i + j]));
  for (int j = 0; i < n; ++i, ++j) acc[j] += std::abs(static_cast<op_t>(x[i]) - static_cast<op_t>(y[i]));
  for (int h = kLanes / 2; h > 0; h >>= 1)
    for (int j = 0; j < h; ++j) acc[j] += acc[j + h];
  return acc[0];
}

int64_t layer_of(const std::vector<int64_t>& task0, int64_t task) {
  return static_cast<int64_t>(std::upper_bound(task0.begin(), task0.end(), task) - task0.begin()) - 1;
}

std::tuple<at::Tensor, at::Tensor> forward_impl(const char* op, at::TensorList anchors, at::TensorList positives,
                                                at::TensorList negatives, const at::Tensor& lw, const at::Tensor& w,
                                                double eps, bool ablation) {
  const Layers s = prepare(op, anchors, positives, negatives, w, ablation, nullptr);
  TORCH_CHECK(lw.dim() == 1 && lw.numel() == s.L, "fastdehaze::", op, ": layer_weights must be [L]");
  const int64_t Q = 1 + s.K;  // columns of the dists table
  auto loss = at::empty({}, w.options());
  auto dists = at::empty({s.L, Q}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a[0].scalar_type(), "contrastive_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    TORCH_CHECK(w.scalar_type() == c10::CppTypeToScalarType<op_t>::value && lw.scalar_type() == w.scalar_type(),
                "fastdehaze::", op, ": weights have the wrong compute dtype");
    const int64_t ntask = s.task0.back();
    const int64_t Qr = ablation ? 1 : Q;  // columns actually computed
    std::vector<double> part(static_cast<size_t>(ntask * Qr), 0.0);
    at::parallel_for(0, ntask, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t l = layer_of(s.task0, task);
        const int64_t i0 = (task - s.task0[l]) * kChunk, n = std::min(kChunk, s.N[l] - i0);
        const scalar_t* a = s.a[l].const_data_ptr<scalar_t>() + i0;
        part[task * Qr] = abs_diff_sum<scalar_t, op_t>(a, s.p[l].const_data_ptr<scalar_t>() + i0, n);
        for (int64_t k = 0; k + 1 < Qr; ++k)
          part[task * Qr + 1 + k] =
              abs_diff_sum<scalar_t, op_t>(a, s.n[l * s.K + k].const_data_ptr<scalar_t>() + i0, n);
      }
    });
    op_t* dp = dists.mutable_data_ptr<op_t>();
    const op_t* wp = w.const_data_ptr<op_t>();
    const op_t* lwp = lw.const_data_ptr<op_t>();
    double total = 0.0;
    for (int64_t l = 0; l < s.L; ++l) {
      for (int64_t q = 0; q < Q; ++q) {
        double acc = 0.0;
        if (q < Qr)
          for (int64_t t = s.task0[l]; t < s.task0[l + 1]; ++t) acc += part[t * Qr + q];
        dp[l * Q + q] = static_cast<op_t>(s.N[l] > 0 ? acc / static_cast<double>(s.N[l])
                                                     : std::numeric_limits<double>::quiet_NaN());
      }
      total += static_cast<double>(
          cm::layer_term<op_t>(dp + l * Q, wp, s.K, static_cast<op_t>(eps), lwp[l], ablation));
    }
    *loss.mutable_data_ptr<op_t>() = static_cast<op_t>(total);
  });
  return {loss, dists};
}

std::vector<at::Tensor> backward_impl(const char* op, const at::Tensor& grad, at::TensorList anchors,
                                      at::TensorList positives, at::TensorList negatives, const at::Tensor& lw,
                                      const at::Tensor& w, const at::Tensor& dists, double eps, bool ablation) {
  std::vector<at::Tensor> grads;
  for (const auto& a : anchors) grads.push_back(at::empty_like(a));
  const Layers s = prepare(op, anchors, positives, negatives, w, ablation, &grads);
  const int64_t Q = 1 + s.K;
  TORCH_CHECK(dists.dim() == 2 && dists.size(0) == s.L && dists.size(1) == Q, "fastdehaze::", op,
              ": dists must be [L, 1 + K]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a[0].scalar_type(), "contrastive_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    auto dc = dists.to(w.scalar_type()).contiguous();
    const op_t* dp = dc.const_data_ptr<op_t>();
    const op_t* wp = w.const_data_ptr<op_t>();
    const op_t* lwp = lw.const_data_ptr<op_t>();
    const op_t g = grad.to(w.scalar_type()).item<op_t>();
    std::vector<op_t> cp(s.L), cn(s.L);
    for (int64_t l = 0; l < s.L; ++l)
      cm::grad_coefs<op_t>(dp + l * Q, wp, s.K, static_cast<op_t>(eps), lwp[l], ablation, g,
                           static_cast<op_t>(s.N[l]), cp[l], cn[l]);
    const int64_t Kr = ablation ? 0 : s.K;
    at::parallel_for(0, s.task0.back(), 1, [&](int64_t begin, int64_t end) {
      op_t buf[kChunk];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t l = layer_of(s.task0, task);
        const int64_t i0 = (task - s.task0[l]) * kChunk, n = std::min(kChunk, s.N[l] - i0);
        const scalar_t* a = s.a[l].const_data_ptr<scalar_t>() + i0;
        const scalar_t* p = s.p[l].const_data_ptr<scalar_t>() + i0;
        const op_t c = cp[l];
        scalar_t* out = grads[l].mutable_data_ptr<scalar_t>() + i0;
        if (Kr == 1) {  // one negative (AECR-Net): a single pass, no buffer
          const scalar_t* n0 = s.n[l * s.K].const_data_ptr<scalar_t>() + i0;
          const op_t c0 = cn[l] * wp[0];
          for (int64_t i = 0; i < n; ++i) {
            const op_t av = static_cast<op_t>(a[i]);
            out[i] = static_cast<scalar_t>(c * cm::sign(av - static_cast<op_t>(p[i])) -
                                           c0 * cm::sign(av - static_cast<op_t>(n0[i])));
          }
          continue;
        }
        for (int64_t i = 0; i < n; ++i)
          buf[i] = c * cm::sign(static_cast<op_t>(a[i]) - static_cast<op_t>(p[i]));
        for (int64_t k = 0; k < Kr; ++k) {
          const scalar_t* nk = s.n[l * s.K + k].const_data_ptr<scalar_t>() + i0;
          const op_t ck = cn[l] * wp[k];
          for (int64_t i = 0; i < n; ++i) buf[i] -= ck * cm::sign(static_cast<op_t>(a[i]) - static_cast<op_t>(nk[i]));
        }
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(buf[i]);
      }
    });
  });
  return grads;
}

std::tuple<at::Tensor, at::Tensor> contrastive_distance_cpu(const at::Tensor& anchor, const at::Tensor& positive,
                                                            at::TensorList negatives, const at::Tensor& w,
                                                            double eps, bool ablation) {
  auto lw = at::ones({1}, w.options());
  return forward_impl("contrastive_distance", {anchor}, {positive}, negatives, lw, w, eps, ablation);
}

at::Tensor contrastive_distance_backward_cpu(const at::Tensor& grad, const at::Tensor& anchor,
                                             const at::Tensor& positive, at::TensorList negatives, const at::Tensor& w,
                                             const at::Tensor& dists, double eps, bool ablation) {
  auto lw = at::ones({1}, w.options());
  return backward_impl("contrastive_distance_backward", grad, {anchor}, {positive}, negatives, lw, w, dists, eps,
                       ablation)[0];
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_cpu(at::TensorList anchors, at::TensorList positives,
                                                        at::TensorList negatives, const at::Tensor& lw,
                                                        const at::Tensor& w, double eps, bool ablation) {
  return forward_impl("contrastive_loss", anchors, positives, negatives, lw, w, eps, ablation);
}

std::vector<at::Tensor> contrastive_loss_backward_cpu(const at::Tensor& grad, at::TensorList anchors,
                                                      at::TensorList positives, at::TensorList negatives,
                                                      const at::Tensor& lw, const at::Tensor& w,
                                                      const at::Tensor& dists, double eps, bool ablation) {
  return backward_impl("contrastive_loss_backward", grad, anchors, positives, negatives, lw, w, dists, eps, ablation);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("contrastive_distance", &contrastive_distance_cpu);
  m.impl("contrastive_distance_backward", &contrastive_distance_backward_cpu);
  m.impl("contrastive_loss", &contrastive_loss_cpu);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward_cpu);
}

}  // namespace fastdehaze
