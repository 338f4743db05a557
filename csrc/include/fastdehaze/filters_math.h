// Per-element math of the box and guided filters (SPEC section 2), written once and used by
// csrc/cpu/filters.cpp and csrc/cuda/filters.cu. T is the compute ("opmath") type: float for
// float/half/bfloat16 storage, double for double.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastdehaze/common.h"

namespace fastdehaze {
namespace filters_math {

// Number of pixels of the window [i - r, i + r] clipped to [0, n).
FD_HD int64_t box_count(int64_t i, int64_t n, int64_t r) {
  const int64_t lo = i - r < 0 ? 0 : i - r;
  const int64_t hi = i + r > n - 1 ? n - 1 : i + r;
  return hi - lo + 1;
}

// ---- box line pass as independent tasks (the CUDA kernels) -----------------------------------
// A line of L values cut into tasks of box_task_len(r) consecutive outputs; task j restarts the
// window sum at its first output (a fresh sum of that clipped window, then slid: add i + r + 1,
// drop i - r), so the tasks of a line need nothing from each other. get(i, bad) returns input i
// (bad = 1, value ignored, for one the pass counts as non-finite), put(i, v) stores output i.
// adjoint: inputs divided by their own window count (the transpose of the mean); otherwise the
// outputs are divided by theirs. Any bad input in a window makes its output NaN.
FD_HD int64_t box_task_len(int64_t r) { return 2 * r + 1 > 16 ? 2 * r + 1 : 16; }
FD_HD int64_t box_tasks(int64_t L, int64_t r) { return (L + box_task_len(r) - 1) / box_task_len(r); }

template <typename Get, typename Put>
FD_HD void box_task(const Get& get, const Put& put, int64_t L, int64_t r, int64_t j, bool adjoint) {
  const int64_t S = box_task_len(r), i0 = j * S, i1 = i0 + S < L ? i0 + S : L;
  double acc = 0.0;
  int64_t cnt = 0;
  auto add = [&](int64_t i, double sg) {
    int bad = 0;
    const double v = get(i, bad);
    if (bad) cnt += sg > 0 ? 1 : -1;
    else acc += sg * (adjoint ? v / static_cast<double>(box_count(i, L, r)) : v);
  };
  const int64_t lo = i0 - r < 0 ? 0 : i0 - r, hi = i0 + r < L - 1 ? i0 + r : L - 1;
  for (int64_t i = lo; i <= hi; ++i) add(i, 1.0);
  for (int64_t i = i0; i < i1; ++i) {
    double o = adjoint ? acc : acc / static_cast<double>(box_count(i, L, r));
    if (cnt > 0) o = static_cast<double>(NAN);
    put(i, o);
    if (i + 1 >= i1) break;
    if (i + r + 1 < L) add(i + r + 1, 1.0);
    if (i - r >= 0) add(i - r, -1.0);
  }
}

// Gray-guide coefficients of He et al. (TPAMI 2013, Alg. 1) from the box means of I, p, I*p,
// I*I: a = cov(I,p) / (var(I) + eps), b = mean(p) - a mean(I).
template <typename T>
FD_HD void gray_coeffs(T mI, T mp, T mIp, T mII, T eps, T& a, T& b) {
  const T var = mII - mI * mI;
  const T cov = mIp - mI * mp;
  a = cov / (var + eps);
  b = mp - a * mI;
}

// Colour-guide coefficients: a = (Sigma + eps U)^-1 cov(I, p) by the adjugate of the symmetric
// 3x3 matrix, b = mean(p) - a . mean(I). mI[3]; mII[6] = means of I0I0, I0I1, I0I2, I1I1, I1I2,
// I2I2; mIp[3] = means of I_g p. Same operation order as fastdehaze/reference/filters.py.
template <typename T>
FD_HD void color_coeffs(const T* mI, T mp, const T* mIp, const T* mII, T eps, T* a, T& b) {
  const T s00 = mII[0] - mI[0] * mI[0] + eps, s01 = mII[1] - mI[0] * mI[1], s02 = mII[2] - mI[0] * mI[2];
  const T s11 = mII[3] - mI[1] * mI[1] + eps, s12 = mII[4] - mI[1] * mI[2], s22 = mII[5] - mI[2] * mI[2] + eps;
  const T c0 = mIp[0] - mI[0] * mp, c1 = mIp[1] - mI[1] * mp, c2 = mIp[2] - mI[2] * mp;
  const T m00 = s11 * s22 - s12 * s12, m01 = s02 * s12 - s01 * s22, m02 = s01 * s12 - s02 * s11;
  const T m11 = s00 * s22 - s02 * s02, m12 = s01 * s02 - s00 * s12, m22 = s00 * s11 - s01 * s01;
  const T inv_det = T(1) / (s00 * m00 + s01 * m01 + s02 * m02);
  a[0] = (m00 * c0 + m01 * c1 + m02 * c2) * inv_det;
  a[1] = (m01 * c0 + m11 * c1 + m12 * c2) * inv_det;
  a[2] = (m02 * c0 + m12 * c1 + m22 * c2) * inv_det;
  b = mp - a[0] * mI[0] - a[1] * mI[1] - a[2] * mI[2];
}

}  // namespace filters_math
}  // namespace fastdehaze
