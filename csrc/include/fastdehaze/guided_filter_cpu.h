// Host-only box-filter engine and gray guided filter core of the C++ CPU kernels (SPEC section 2),
// written once and used by csrc/cpu/filters.cpp (box_filter, guided_filter) and csrc/cpu/dcp.cpp
// (the fused dehaze_dcp).
//
// box_engine<K> box-filters K values per pixel at once. Tasks are (plane, strip of columns), run in
// parallel. A task walks down its strip: each row entering the vertical window gets its horizontal
// window means (float64 running sum over the row segment widened by r on both sides) written to a
// ring of the last 2r + 1 rows, which stays in L2; float64 vertical running sums per column give
// the K box means of each row (window clipped at the border, normalised by the pixel count inside),
// handed to an epilogue. Running sums are restarted per row segment and per strip, so the error
// stays at rounding level on multi-megapixel images; nothing of image size is stored between the
// horizontal and the vertical pass.
// gray_guided_filter runs two such passes (He et al., TPAMI 2013, Alg. 1): the four means of I, p,
// I*p, I*I give a and b in pass 1's epilogue (K = 4, a and b stored interleaved in the caller's
// scratch), and the two means of a and b are handed to the caller's epilogue in pass 2 (K = 2),
// which forms q = mean(a) I + mean(b) (and may fuse more work there).
// Non-finite values: when the inputs hold NaN/inf (the caller says so, e.g. from has_nonfinite), a
// slower path counts non-finite values in every window and writes NaN there (the reference's rule
// of fastdehaze/ops/filters.py); a or b non-finite (var + eps == 0) switches pass 2 to that path.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastdehaze/filters_math.h"

namespace fastdehaze {
namespace gf_cpu {

namespace fm = filters_math;

inline std::vector<double> inverse_counts(int64_t n, int64_t r) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = 1.0 / static_cast<double>(fm::box_count(i, n, r));
  return v;
}

// Whether any of the n values is NaN or +-inf.
template <typename scalar_t>
bool has_nonfinite(const scalar_t* x, int64_t n) {
  std::atomic<bool> bad{false};
  at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
    bool ok = true;
    for (int64_t i = b; i < e; ++i) {
      const float v = static_cast<float>(x[i]);
      ok &= (v - v == 0.f);  // false iff v is NaN or +-inf (an and-reduction: vectorises)
    }
    if (!ok) bad.store(true, std::memory_order_relaxed);
  });
  return bad.load();
}

// Per-task scratch of box_engine: one column strip of one plane.
template <int K, typename op_t>
struct Strip {
  std::vector<op_t> line;      // (n + 2r) x K values of the row segment [xa, xb)
  std::vector<double> s;       // the same in float64 (pre-scaled by 1/count for the adjoint)
  std::vector<unsigned char> bad;
  std::vector<op_t> ring;      // row means of the last R rows, R = min(H, 2r + 1), n x K each
  std::vector<double> acc;     // vertical running sums, n x K
  std::vector<int> cnt;        // non-finite counts of the vertical window (NANS only)
  std::vector<op_t> m;         // the means handed to emit
};

// Horizontal window sums of row segment s (columns [xa, xb)) for output columns [x0, x0 + n).
template <int K, bool NANS, typename in_t, typename op_t>
void hseg(const in_t* s, const unsigned char* bad, op_t* out, int64_t W, int64_t r, int64_t xa, int64_t xb,
          int64_t x0, int64_t n, const double* icw, bool adjoint) {
  double acc[K];
  int cnt[K];
  for (int k = 0; k < K; ++k) acc[k] = 0, cnt[k] = 0;
  const int64_t lo0 = std::max<int64_t>(0, x0 - r), hi0 = std::min(W - 1, x0 + r);
  for (int64_t x = lo0; x <= hi0; ++x)
    for (int k = 0; k < K; ++k) {
      acc[k] += static_cast<double>(s[(x - xa) * K + k]);
      if (NANS) cnt[k] += bad[(x - xa) * K + k];
    }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t x = x0 + j;
    const double sc = adjoint ? 1.0 : icw[x];
    for (int k = 0; k < K; ++k) {
      op_t v = static_cast<op_t>(acc[k] * sc);
      if (NANS && cnt[k] > 0) v = static_cast<op_t>(NAN);
      out[j * K + k] = v;
    }
    const int64_t xin = x + r + 1, xout = x - r;
    const bool din = xin < xb, dout = xout >= xa;
    for (int k = 0; k < K; ++k) {
      // one dependent add per step: the entering-minus-leaving difference is off the chain
      const double d = (din ? static_cast<double>(s[(xin - xa) * K + k]) : 0.0) -
                       (dout ? static_cast<double>(s[(xout - xa) * K + k]) : 0.0);
      acc[k] += d;
      if (NANS) cnt[k] += (din ? bad[(xin - xa) * K + k] : 0) - (dout ? bad[(xout - xa) * K + k] : 0);
    }
  }
}

// One column strip [x0, x0 + n) of plane pl: rows enter the vertical window one at a time; each
// entering row's horizontal means (from the row segment [x0 - r, x0 + n + r)) go to a ring of
// the last 2r + 1 rows (L2-resident), so nothing of image size is stored between the passes.
template <int K, bool NANS, typename op_t, typename LoadSeg, typename Emit>
void strip_pass(Strip<K, op_t>& st, int64_t pl, int64_t H, int64_t W, int64_t r, int64_t x0, int64_t n,
                const double* icw, const double* ich, bool adjoint, LoadSeg& load_seg, Emit& emit) {
  const int64_t xa = std::max<int64_t>(0, x0 - r), xb = std::min(W, x0 + n + r);
  const int64_t R = std::min(H, 2 * r + 1), L = n * K;
  st.line.resize((xb - xa) * K);
  st.s.resize((xb - xa) * K);
  st.ring.resize(R * L);
  st.acc.assign(L, 0.0);
  st.m.resize(L);
  if (NANS) {
    st.bad.resize((xb - xa) * K);
    st.cnt.assign(L, 0);
  }
  auto row_in = [&](int64_t y) {  // horizontal means of row y into its ring slot
    const op_t* line = load_seg(pl, y, xa, xb, st.line.data());
    op_t* slot = st.ring.data() + (y % R) * L;
    if (!NANS && !adjoint) {  // common case: sum the op_t values directly into float64
      hseg<K, false>(line, nullptr, slot, W, r, xa, xb, x0, n, icw, false);
      return;
    }
    for (int64_t x = xa; x < xb; ++x)
      for (int k = 0; k < K; ++k) {
        double v = static_cast<double>(line[(x - xa) * K + k]);
        if (NANS) {
          const bool b = !std::isfinite(v);
          st.bad[(x - xa) * K + k] = b;
          if (b) v = 0.0;
        }
        st.s[(x - xa) * K + k] = adjoint ? v * icw[x] : v;
      }
    hseg<K, NANS>(st.s.data(), st.bad.data(), slot, W, r, xa, xb, x0, n, icw, adjoint);
  };
  auto vadd = [&](int64_t y, double sgn) {
    const op_t* row = st.ring.data() + (y % R) * L;
    const double sc = adjoint ? sgn * ich[y] : sgn;
    double* acc = st.acc.data();
    if (NANS) {
      const int isg = sgn > 0 ? 1 : -1;
      for (int64_t j = 0; j < L; ++j) {
        const double v = static_cast<double>(row[j]);
        const bool b = v != v;
        acc[j] += b ? 0.0 : v * sc;
        st.cnt[j] += b ? isg : 0;
      }
    } else {
      for (int64_t j = 0; j < L; ++j) acc[j] += static_cast<double>(row[j]) * sc;
    }
  };
  const int64_t e = std::min(r, H - 1);
  for (int64_t y = 0; y <= e; ++y) {
    row_in(y);
    vadd(y, 1.0);
  }
  for (int64_t y = 0; y < H; ++y) {
    const double sc = adjoint ? 1.0 : ich[y];
    op_t* m = st.m.data();
    const double* acc = st.acc.data();
    for (int64_t j = 0; j < L; ++j) m[j] = static_cast<op_t>(acc[j] * sc);
    if (NANS)
      for (int64_t j = 0; j < L; ++j)
        if (st.cnt[j] > 0) m[j] = static_cast<op_t>(NAN);
    emit(pl, y, x0, n, static_cast<const op_t*>(m));
    if (!NANS && !adjoint && y - r >= 0 && y + r + 1 < H) {
      // common case, one sweep: acc += entering row - leaving row (the leaving row is read
      // before row_in overwrites its ring slot, so keep it in the scratch m first)
      const op_t* old = st.ring.data() + ((y - r) % R) * L;
      std::copy(old, old + L, m);
      row_in(y + r + 1);
      const op_t* nw = st.ring.data() + ((y + r + 1) % R) * L;
      double* acc = st.acc.data();
      for (int64_t j = 0; j < L; ++j) acc[j] += static_cast<double>(nw[j]) - static_cast<double>(m[j]);
      continue;
    }
    if (y - r >= 0) vadd(y - r, -1.0);  // leaves first: row y + r + 1 takes its ring slot
    if (y + r + 1 < H) {
      row_in(y + r + 1);
      vadd(y + r + 1, 1.0);
    }
  }
}

// Box-filters K planes-worth of values per pixel for P planes of H x W: load_seg(pl, y, xa, xb,
// buf) returns a pointer to line[(x - xa) * K + k] for x in [xa, xb) (filled into buf, or in place); emit(pl, y, x0, n, m) receives the K box
// means of the row segment [x0, x0 + n) as m[(x - x0) * K + k]. adjoint: box sums of value / count.
// nans: the inputs may hold NaN/inf (slower path that counts them in every window).
// Tasks = (plane, column strip), run in parallel; float64 running sums restarted per strip.
template <int K, typename op_t, typename LoadSeg, typename Emit>
void box_engine(int64_t P, int64_t H, int64_t W, int64_t r, bool adjoint, bool nans, LoadSeg load_seg, Emit emit) {
  const std::vector<double> icw = inverse_counts(W, r), ich = inverse_counts(H, r);
  // strip width: the ring of 2r + 1 rows of S x K means stays within ~640 KB (L2), S in [64, 1024]
  const int64_t ringrow = K * static_cast<int64_t>(sizeof(op_t)) * std::min(H, 2 * r + 1);
  int64_t S = std::max<int64_t>(64, std::min<int64_t>(1024, (640 * 1024 / ringrow) / 16 * 16));
  const int64_t T = at::get_num_threads(), want = 2 * T;
  if (P * ((W + S - 1) / S) < want) S = std::max<int64_t>(64, (W * P + want - 1) / want);
  int64_t nstrip = (W + S - 1) / S;
  if (P < T && nstrip > 1 && nstrip % T != 0) {  // equal strips, a multiple of the threads: balanced
    nstrip = (nstrip + T - 1) / T * T;
    S = (W + nstrip - 1) / nstrip;
    nstrip = (W + S - 1) / S;
  }
  at::parallel_for(0, P * nstrip, 1, [&](int64_t t0, int64_t t1) {
    Strip<K, op_t> st;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t pl = t / nstrip, x0 = (t % nstrip) * S, n = std::min(S, W - x0);
      if (nans) strip_pass<K, true>(st, pl, H, W, r, x0, n, icw.data(), ich.data(), adjoint, load_seg, emit);
      else strip_pass<K, false>(st, pl, H, W, r, x0, n, icw.data(), ich.data(), adjoint, load_seg, emit);
    }
  });
}


// Gray guided filter of P planes of H x W (He et al., TPAMI 2013, Alg. 1), in op_t (float or double)
// with float64 running sums. load(pl, y, xa, xb, g, s) writes the guide I and the source p of row y,
// columns [xa, xb), of plane pl to g[x - xa] and s[x - xa] (contiguous, so that it vectorises; the
// core interleaves I, p, I p, I I for the box engine). ab: scratch of P * H * W * 2 op_t (need not be initialised). emit(pl, y, x0, n, m)
// receives m[2 i] = mean(a), m[2 i + 1] = mean(b) at column x0 + i of row y; q = m[2i] I + m[2i+1].
// nans: the guide or the source may hold NaN/inf.
template <typename op_t, typename Load, typename Emit>
void gray_guided_filter(int64_t P, int64_t H, int64_t W, int64_t r, op_t eps, bool nans, op_t* ab, Load load,
                        Emit emit) {
  const int64_t HW = H * W;
  std::atomic<bool> ab_bad{false};  // a or b not finite (NaN/inf input, or var + eps == 0)
  box_engine<4, op_t>(
      P, H, W, r, false, nans,
      [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t* line) {
        const int64_t n = xb - xa;
        thread_local std::vector<op_t> gs;  // guide and source of the row segment
        if (static_cast<int64_t>(gs.size()) < 2 * n) gs.resize(2 * n);
        op_t* __restrict g = gs.data();
        op_t* __restrict sv = g + n;
        load(pl, y, xa, xb, g, sv);
        op_t* __restrict l = line;
        for (int64_t i = 0; i < n; ++i) {
          const op_t iv = g[i], pv = sv[i];
          l[i * 4] = iv, l[i * 4 + 1] = pv, l[i * 4 + 2] = iv * pv, l[i * 4 + 3] = iv * iv;
        }
        return static_cast<const op_t*>(line);
      },
      [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
        op_t* __restrict o = ab + (pl * HW + y * W + x0) * 2;
        bool ok = true;
        for (int64_t i = 0; i < n; ++i) {
          op_t a, b;
          fm::gray_coeffs(m[i * 4 + 0], m[i * 4 + 1], m[i * 4 + 2], m[i * 4 + 3], eps, a, b);
          o[i * 2] = a, o[i * 2 + 1] = b;
          ok &= (a - a == op_t(0)) & (b - b == op_t(0));  // false iff a or b is NaN/inf (vectorises)
        }
        if (!ok) ab_bad.store(true, std::memory_order_relaxed);
      });
  box_engine<2, op_t>(
      P, H, W, r, false, nans || ab_bad.load(),
      [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t*) {
        return static_cast<const op_t*>(ab + (pl * HW + y * W + xa) * 2);  // read in place
      },
      emit);
}

// The same on raw pointers for one plane: out = guided filter of src with guide (all H x W,
// contiguous, T = float or double); scratch: 2 H W values of T.
template <typename T>
void gray_guided_filter_plane(const T* guide, const T* src, T* out, int64_t H, int64_t W, int64_t r, T eps,
                              T* scratch) {
  if (H * W == 0) return;
  const bool nans = has_nonfinite(guide, H * W) || has_nonfinite(src, H * W);
  gray_guided_filter<T>(
      1, H, W, r, eps, nans, scratch,
      [&](int64_t, int64_t y, int64_t xa, int64_t xb, T* g, T* s) {
        std::copy(guide + y * W + xa, guide + y * W + xb, g);
        std::copy(src + y * W + xa, src + y * W + xb, s);
      },
      [&](int64_t, int64_t y, int64_t x0, int64_t n, const T* m) {
        const T* g = guide + y * W + x0;
        T* q = out + y * W + x0;
        for (int64_t i = 0; i < n; ++i) q[i] = m[i * 2] * g[i] + m[i * 2 + 1];
      });
}

}  // namespace gf_cpu
}  // namespace fastdehaze
