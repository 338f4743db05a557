// Per-layer scalar math of the contrastive distance (SPEC section 4), written once and used by
// csrc/cpu/contrastive.cpp and csrc/cuda/contrastive.cu, so what the CPU tests check is what
// the GPU runs. T is the compute ("opmath") type: float for float/half/bfloat16, double for double.
//
//   d(x, y) = mean |x - y|,   D = sum_k w_k d(a, n_k) + eps,   ratio = d(a, p) / D
//   dratio/da = 1/N [sign(a - p) / D - d(a, p) sum_k w_k sign(a - n_k) / D^2]
#pragma once
#include "fastdehaze/common.h"

namespace fastdehaze {
namespace contrastive_math {

// sign(x) with sign(0) = 0 and sign(NaN) = 0: the gradient torch gives abs (torch.sign).
template <typename T>
FD_HD T sign(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
}

// D = sum_k w_k d_k + eps, with d = dists row of one layer: d[0] = d(a,p), d[1 + k] = d(a,n_k).
template <typename T>
FD_HD T denominator(const T* d, const T* w, int64_t K, T eps) {
  T D = T(0);
  for (int64_t k = 0; k < K; ++k) D += w[k] * d[1 + k];
  return D + eps;
}

// The layer's term of the loss: lambda * ratio (lambda * d(a,p) in ablation mode).
template <typename T>
FD_HD T layer_term(const T* d, const T* w, int64_t K, T eps, T lambda, bool ablation) {
  return ablation ? lambda * d[0] : lambda * (d[0] / denominator(d, w, K, eps));
}

// Backward coefficients of one layer: dL/da_i = cp sign(a_i - p_i) - cn sum_k w_k sign(a_i - n_k,i),
// cp = g lambda / (N D), cn = cp d(a,p) / D (cn = 0 and D = 1 in ablation mode).
template <typename T>
FD_HD void grad_coefs(const T* d, const T* w, int64_t K, T eps, T lambda, bool ablation, T g, T numel, T& cp,
                      T& cn) {
  if (ablation) {
    cp = g * lambda / numel;
    cn = T(0);
    return;
  }
  const T D = denominator(d, w, K, eps);
  cp = g * lambda / (numel * D);
  cn = cp * d[0] / D;
}

}  // namespace contrastive_math
}  // namespace fastdehaze
