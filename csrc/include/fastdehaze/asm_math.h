// Per-element math of the atmospheric scattering model (SPEC section 1), written once and used
// by csrc/cpu/asm.cpp and csrc/cuda/asm.cu, so what the CPU tests check is what the GPU runs.
// T is the compute ("opmath") type: float for float/half/bfloat16 storage, double for double.
#pragma once
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
template <>
FD_HD float transmission<float>(float depth, float beta) { return expf(-beta * depth); }
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
