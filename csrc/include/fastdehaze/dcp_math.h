// Per-element math of the dark channel prior ops (SPEC section 2), shared by csrc/cpu/dcp.cpp and
// csrc/cuda/dcp.cu. T is the compute type (float for float/half/bfloat16, double for double).
//
// Running window min/max (van Herk / Gil-Werman) on a line of n values, window [x-r, x+r]
// clipped to [0, n-1]: the line is cut into blocks of w = 2r+1 aligned at 0; g[p] is the
// extremum of [block start, p], h[p] that of [p, block end]. A window [lo, hi] spans at most
// two blocks: ext(h[lo], g[hi]) when it spans two; g[hi] when lo is a block start; h[lo]
// otherwise (then hi is the end of the line's last block). 3 comparisons per element whatever r.
// Ties keep the lower position (g updates on strictly better, h on better-or-equal, h wins the
// combination), which with rows first, columns second and the lowest channel within a pixel
// gives SPEC's rule: the extremum met first scanning the window row-major.
#pragma once
#include <cstdint>

#include "fastdehaze/common.h"

namespace fastdehaze {
namespace dcp_math {

// Lower bound of A in transmission's I / A (the A = 0 guard; see fastdehaze.reference.dcp.A_MIN).
constexpr double kAMin = 1e-6;

// a strictly better than b: smaller (larger for max); NaN beats every number; NaN vs NaN ties.
template <bool IS_MAX, typename T>
FD_HD bool better(T a, T b) {
  return (IS_MAX ? (a > b) : (a < b)) || (a != a && b == b);
}

// NaN-propagating extremum.
template <bool IS_MAX, typename T>
FD_HD T ext(T a, T b) {
  return IS_MAX ? nan_max(a, b) : nan_min(a, b);
}

// 1 / max(A, kAMin) (NaN A stays NaN).
template <typename T>
FD_HD T safe_inv_A(T A) {
  return T(1) / ((A < T(kAMin)) ? T(kAMin) : A);
}

// BT.601 luma weights.
template <typename T> FD_HD T luma_r() { return T(0.299); }
template <typename T> FD_HD T luma_g() { return T(0.587); }
template <typename T> FD_HD T luma_b() { return T(0.114); }

// Clipped window [lo, hi] of x with radius r on a line of n.
FD_HD int64_t win_lo(int64_t x, int64_t r) { return x - r < 0 ? 0 : x - r; }
FD_HD int64_t win_hi(int64_t x, int64_t r, int64_t n) { return x + r > n - 1 ? n - 1 : x + r; }

// Order-preserving unsigned keys of floating values (NaN, of either sign, is the largest key):
// radix selection of the atmospheric light's top-k.
FD_HD uint32_t order_key(float v) {
  if (v != v) return 0xFFFFFFFFu;
  union { float f; uint32_t u; } c;
  c.f = v;
  return (c.u & 0x80000000u) ? ~c.u : (c.u | 0x80000000u);
}
FD_HD uint64_t order_key(double v) {
  if (v != v) return 0xFFFFFFFFFFFFFFFFull;
  union { double f; uint64_t u; } c;
  c.f = v;
  return (c.u & 0x8000000000000000ull) ? ~c.u : (c.u | 0x8000000000000000ull);
}

template <typename T> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };

// ---- the blocked line pass of the CUDA kernels -----------------------------------------------
// The running extremum above as independent tasks: task j of a line emits the outputs
// x = p - r for p in [j w, min((j+1) w, n + r)), exactly as the sequential pass does at step p
// (g restarts at j w, a block start). Its windows with lo in block j-1 need that block's h
// (suffix) extrema: task j computes them itself (into hv/ha at block j-1's positions, which no
// other task writes), so the tasks of a line need no synchronisation. A task with j w >= n only
// emits tail outputs whose windows lie in block j-1 and do not start at its first position, so
// it reads h only (its g is never used). Element p of a line at vals[p * s] (likewise hv, ha,
// ov, oa); int32 positions: n < 2^29 and r <= n keep n + 3r and j w in int32.
FD_HD int32_t line_tasks(int32_t n, int32_t r) { return (n + r + 2 * r) / (2 * r + 1); }

template <bool IS_MAX, bool ARG, typename M>
FD_HD void window_task(const M* vals, int64_t s, int32_t n, int32_t r, int32_t j, M* hv, int32_t* ha, M* ov,
                       int32_t* oa, bool post, M omega, M ident) {
  const int32_t w = 2 * r + 1, b0 = j * w;
  M g = ident;
  int32_t gpos = 0;
  if (j > 0) {  // h of block j-1 = [b0 - w, min(b0, n) - 1]
    const int32_t ps = b0 - w, pe = (b0 < n ? b0 : n) - 1;
    M h = ident;
    int32_t hpos = 0;
    for (int32_t p = pe; p >= ps; --p) {
      const M v = vals[p * s];
      if (p == pe || !better<IS_MAX>(h, v)) {
        h = v;
        hpos = p;
      }
      hv[p * s] = h;
      if (ARG) ha[p * s] = hpos;
    }
  }
  const int32_t pend = b0 + w < n + r ? b0 + w : n + r;
  for (int32_t p = b0; p < pend; ++p) {
    if (p < n) {
      const M v = vals[p * s];
      if (p == b0 || better<IS_MAX>(v, g)) {
        g = v;
        gpos = p;
      }
    }
    const int32_t x = p - r;
    if (x < 0) continue;
    const int32_t lo = x - r < 0 ? 0 : x - r, hi = x + r > n - 1 ? n - 1 : x + r;
    const bool same = lo / w == hi / w;
    M o = g;
    int32_t opos = gpos;
    if (!(same && lo % w == 0)) {
      const M hl = hv[lo * s];
      if (same || !better<IS_MAX>(g, hl)) {
        o = hl;
        if (ARG) opos = ha[lo * s];
      }
    }
    if (post) o = M(1) - omega * o;  // transmission() below
    ov[x * s] = o;
    if (ARG) oa[x * s] = opos;
  }
}

// ---- atmospheric light's radix select (CUDA, multi-block) -------------------------------------
// One 8-bit digit step of the top-k selection: hist[256] counts the keys of the current prefix
// by digit; the k-th largest key has the largest digit dg whose count from the top reaches kk.
// Returns dg and sets kk to the rank left within it.
template <typename C>
FD_HD int select_digit(const C* hist, long long& kk) {
  long long cum = 0;
  int dg = 255;
  for (; dg > 0; --dg) {
    if (cum + static_cast<long long>(hist[dg]) >= kk) break;
    cum += static_cast<long long>(hist[dg]);
  }
  kk -= cum;
  return dg;
}

// Pixels per block of the multi-block atmospheric light kernels (also its tie-rank chunks).
constexpr int64_t kAtmoChunk = 16384;

// ---- backward as a gather (the CUDA kernels: deterministic, no atomics) ----------------------
// The forward's winners, per image, row-major [H, W]: chan = lowest extremal channel of a pixel,
// rows_a = column of the winner of a pixel's row window, cols_a = row of the winner of a pixel's
// column window (over the row results). Output (y, x) sends its gradient to input
// (cols_a[y, x], rows_a[cols_a[y, x], x]) in channel chan of that pixel. The two adjoints below
// invert that chain per *input*, in a fixed order (ascending position), so every gradient
// element is one thread's sequential sum.
// Column adjoint: sum of g(y * W + x) over the rows y of ys's clipped window with cols_a[y, x] == ys.
template <typename M, typename G>
FD_HD M col_adjoint(const G& g, const int32_t* cols_a, int64_t ys, int64_t x, int64_t H, int64_t W, int64_t r) {
  M s = M(0);
  const int64_t lo = win_lo(ys, r), hi = win_hi(ys, r, H);
  for (int64_t y = lo; y <= hi; ++y)
    if (cols_a[y * W + x] == ys) s += g(y * W + x);
  return s;
}
// Row adjoint on row ys: sum of g1[x] over the columns x of xs's clipped window with rows_a[x] == xs.
template <typename M>
FD_HD M row_adjoint(const M* g1_row, const int32_t* rows_a_row, int64_t xs, int64_t W, int64_t r) {
  M s = M(0);
  const int64_t lo = win_lo(xs, r), hi = win_hi(xs, r, W);
  for (int64_t x = lo; x <= hi; ++x)
    if (rows_a_row[x] == xs) s += g1_row[x];
  return s;
}

// Transmission from the scaled dark value.
template <typename T>
FD_HD T transmission(T dark_scaled, T omega) { return T(1) - omega * dark_scaled; }

}  // namespace dcp_math
}  // namespace fastdehaze
