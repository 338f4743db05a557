// Per-element math of the depth-difference (DCMPNet "difference perception") ops, SPEC section 5,
// written once and used by csrc/cpu/depth_difference.cpp and csrc/cuda/depth_difference.cu, so
// what the CPU tests check is what the GPU runs. T is the compute ("opmath") type: float for
// float/half/bfloat16 storage, double for double.
//
// Softmax statistics are carried as a pair (m, s): m the running maximum, s the sum of
// exp(x - m) of the values seen so far. Two pairs merge as in an online softmax (Milakov &
// Gimelshein 2018), and lse = m + log(s) at the end. NaN is carried by s (exp(NaN) = NaN); a
// non-finite final maximum (+inf, or -inf when every value is -inf) gives lse = NaN, as
// torch.softmax gives NaN for such rows.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#include "fastdehaze/common.h"

namespace fastdehaze {
namespace depth_difference_math {

// exp(x) in float: Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, and a degree-7
// polynomial for exp(r) (Cephes expf coefficients, about 1 ulp on the normal range), scaled by
// 2^k through the exponent bits. Pure arithmetic and selects, so that g++ vectorises loops over
// it (libm's expf is not vectorised without -ffast-math). Results below 2^-126 flush to 0 (the
// caller only takes exp of values minus their maximum: such terms are < 1e-38 of the sum);
// x > 88.72 gives +inf; NaN gives NaN. The double overload is libm's exp (float64 is the
// reference precision, not a fast path).
FD_HD float dd_exp(float x) {
  float xc = x > -87.33654f ? x : -87.33654f;  // NaN -> the clamp value (selected away below)
  xc = xc < 88.0f ? xc : 88.0f;
  const float t = xc * 1.44269504088896341f + 12582912.0f;  // round-to-nearest of x log2(e)
  const float k = t - 12582912.0f;
  float r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
#ifdef __CUDA_ARCH__
  const float scale = __int_as_float(bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
#endif
  y = y * scale;
  y = x < -87.33654f ? 0.0f : y;
  y = x > 88.72283f ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}
FD_HD double dd_exp(double x) { return exp(x); }

template <typename T>
FD_HD T dd_log(T x) { return log(x); }

template <typename T>
FD_HD T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// Merges the softmax pair (m2, s2) into (m, s). A single value x is the pair (x, 1).
template <typename T>
FD_HD void merge(T& m, T& s, T m2, T s2) {
  if (m2 > m) {
    s = s * dd_exp(m - m2) + s2;
    m = m2;
  } else if (m2 == m) {
    s += s2;
  } else {
    s += s2 * dd_exp(m2 - m);  // also the NaN path: exp(NaN) = NaN
  }
}

// log-sum-exp of the merged pair; NaN for a non-finite maximum (torch.softmax's NaN rows).
template <typename T>
FD_HD T finalize_lse(T m, T s) {
  const T inf = std::numeric_limits<T>::infinity();
  if (!(m > -inf && m < inf)) return std::numeric_limits<T>::quiet_NaN();
  return m + dd_log(s);
}

// sign with torch.sign semantics (sign(0) = 0, sign(NaN) = NaN).
template <typename T>
FD_HD T sgn(T x) { return x != x ? x : static_cast<T>((x > T(0)) - (x < T(0))); }

// Per-pixel terms of L_depth = mean |W e| + mean |e|, e = D^ - D, given S = sum_c P_c and
// W = S + C eps:  a = |W e|, b = |e|, and d = dL/dW up to the factor g/N, i.e.
// sign(W e) * e = |e| where W e != 0 (so the softmax backward's sum_j P_j dL/dP_j is
// g/N * sum_p S_p d_p).
template <typename T>
FD_HD T abs_(T x) { return x < T(0) ? -x : x; }

template <typename T>
FD_HD T loss_dW(T W, T e) { return (W * e != T(0)) ? abs_(e) : T(0); }

// d L / d D^ up to g/N: sign(W e) W + sign(e) (d L / d D is its negative).
template <typename T>
FD_HD T loss_dDpred(T W, T e) { return sgn(W * e) * W + sgn(e); }

}  // namespace depth_difference_math
}  // namespace fastdehaze
