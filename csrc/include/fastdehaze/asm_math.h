// Per-element math of the atmospheric scattering model (SPEC section 1), written once and used
// by csrc/cpu/asm.cpp and csrc/cuda/asm.cu, so what the CPU tests check is what the GPU runs.
// T is the compute ("opmath") type: float for float/half/bfloat16 storage, double for double.
#pragma once
#include <cstdint>

#include "fastdehaze/common.h"

namespace fastdehaze {
namespace asm_math {

// max(t, t0) with torch.clamp(t, min=t0) semantics: NaN stays NaN.
template <typename T>
FD_HD T clamp_t(T t, T t0) { return (t < t0) ? t0 : t; }

// d max(t, t0) / dt: 1 where t >= t0 (as torch.clamp's backward), 0 below t0 and for NaN.
template <typename T>
FD_HD T clamp_t_grad(T t, T t0) { return (t >= t0) ? T(1) : T(0); }

// Recovery J = (I - A) / max(t, t0) + A, given inv = 1 / max(t, t0).
template <typename T>
FD_HD T recover(T I, T inv, T A) { return (I - A) * inv + A; }

// The same with the division written out, J = (I - A) / tc + A, tc = max(t, t0): one operation
// fewer per element where 1 / tc is not shared by several channels (the CPU forward), and the
// rounding of the reference formula.
template <typename T>
FD_HD T recover_div(T I, T tc, T A) { return (I - A) / tc + A; }

// Output clamp of recover: value and pass-through mask (torch.clamp semantics).
template <typename T>
FD_HD T clamp_out(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }
template <typename T>
FD_HD bool clamp_out_pass(T x, T lo, T hi) { return x >= lo && x <= hi; }

// Synthesis I = J t + A (1 - t).
template <typename T>
FD_HD T synthesize(T J, T t, T A) { return (J - A) * t + A; }

// Partial derivatives of the synthesis: dI/dJ = t, dI/dt = J - A, dI/dA = 1 - t.
template <typename T>
FD_HD T synthesize_dt(T J, T A) { return J - A; }
template <typename T>
FD_HD T synthesize_dA(T t) { return T(1) - t; }

// Transmission from depth, t = exp(-beta d).
template <typename T>
FD_HD T transmission(T depth, T beta);
#if !defined(__CUDA_ARCH__)
// exp(x) in float for the host (CPU kernels): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
// the degree-5 minimax polynomial of Cephes' expf, and 2^n applied as two factors 2^(n/2) so
// that subnormal results come out right. Within ~2 ulp of expf; 0 below -103.98 and inf above
// 88.73 (as expf); NaN stays NaN. Branch-free and call-free, so that GCC vectorises the loops
// that use it (glibc's expf is a scalar call). The GPU uses expf.
FD_HD float exp2i_host(int32_t k) {  // 2^k for k in [-126, 127]
  const int32_t bits = (k + 127) << 23;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
FD_HD float exp_host(float x) {
  const float lo = -103.97208f, hi = 88.72284f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  // n = round(x / ln2) by the 1.5 * 2^23 trick: the low bits of `big` hold n.
  const float big = xc * 1.44269504088896341f + 12582912.0f;
  const float n = big - 12582912.0f;
  int32_t nbits;
  __builtin_memcpy(&nbits, &big, 4);
  nbits -= 0x4B400000;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const float z = r * r;
  const float y = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                    1.6666665459e-1f) * r + 5.0000001201e-1f) * z + r + 1.0f;
  const int32_t n1 = nbits >> 1;
  const float e = (y * exp2i_host(n1)) * exp2i_host(nbits - n1);
  return x < lo ? 0.0f : (x > hi ? __builtin_inff() : e);
}
template <>
FD_HD float transmission<float>(float depth, float beta) { return exp_host(-beta * depth); }
#else
template <>
FD_HD float transmission<float>(float depth, float beta) { return expf(-beta * depth); }
#endif
template <>
FD_HD double transmission<double>(double depth, double beta) { return exp(-beta * depth); }

// Given t = exp(-beta d): dt/dd = -beta t, dt/dbeta = -d t.
template <typename T>
FD_HD T transmission_dd(T t, T beta) { return -beta * t; }
template <typename T>
FD_HD T transmission_dbeta(T t, T depth) { return -depth * t; }

// AOD-Net recomposition J = K I - K + b (Li et al., ICCV 2017, eq. 4);
// dJ/dI = K, dJ/dK = I - 1, dJ/db = 1.
template <typename T>
FD_HD T recompose_k(T I, T K, T b) { return K * I - K + b; }
template <typename T>
FD_HD T recompose_k_dK(T I) { return I - T(1); }

}  // namespace asm_math
}  // namespace fastdehaze
