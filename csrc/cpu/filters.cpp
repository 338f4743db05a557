// C++ CPU kernels of the box and guided filters (SPEC section 2).
//
// One engine (box_engine<K>) box-filters K values per pixel at once (K = 1 for box_filter; the
// K statistics of the guided filter). Tasks are (plane, strip of columns), run in parallel. A
// task walks down its strip: each row entering the vertical window gets its horizontal window
// means (float64 running sum over the row segment widened by r on both sides) written to a ring
// of the last 2r + 1 rows, which stays in L2; float64 vertical running sums per column give the
// K box means of each row, handed to an epilogue. Running sums are restarted per row segment and
// per strip, so the error stays at rounding level on multi-megapixel images; nothing of image
// size is stored between the horizontal and the vertical pass. The gray guided filter runs two
// such passes: the four means of I, p, I*p, I*I give a and b in pass 1's epilogue (K = 4), and
// the two means of a and b give q in pass 2's (K = 2).
// Non-finite values: when the inputs hold NaN/inf (one vectorised scan first), a slower path
// counts non-finite values in every window and writes NaN there (the reference's rule).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "fastdehaze/cpu_utils.h"
#include "fastdehaze/filters_math.h"

namespace fastdehaze {
namespace {

namespace fm = filters_math;

std::vector<double> inverse_counts(int64_t n, int64_t r) {
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

at::Tensor box_common(const at::Tensor& x, int64_t r, bool adjoint, const char* name) {
  TORCH_CHECK(x.dim() == 4, "fastdehaze::", name, ": x must be [B,C,H,W]");
  TORCH_CHECK(r >= 0, "fastdehaze::", name, ": r must be >= 0");
  check_cpu(x, "x");
  auto xc = x.contiguous();
  auto out = at::empty_like(xc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t P = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_filter_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    box_engine<1, op_t>(
        P, H, W, r, adjoint, has_nonfinite(xp, P * HW),
        [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t* line) {
          const scalar_t* src = xp + pl * HW + y * W;
          for (int64_t i = xa; i < xb; ++i) line[i - xa] = static_cast<op_t>(src[i]);
          return static_cast<const op_t*>(line);
        },
        [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
          scalar_t* dst = op + pl * HW + y * W + x0;
          for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(m[i]);
        });
  });
  return out;
}

at::Tensor box_filter_cpu(const at::Tensor& x, int64_t r) { return box_common(x, r, false, "box_filter"); }

at::Tensor box_filter_backward_cpu(const at::Tensor& grad, int64_t r) {
  return box_common(grad, r, true, "box_filter_backward");
}

at::Tensor guided_filter_cpu(const at::Tensor& I, const at::Tensor& p, int64_t r, double eps) {
  TORCH_CHECK(I.dim() == 4 && p.dim() == 4, "fastdehaze::guided_filter: I and p must be [B,C,H,W]");
  TORCH_CHECK(I.size(1) == 1 || I.size(1) == 3, "fastdehaze::guided_filter: I must have 1 or 3 channels");
  TORCH_CHECK(I.size(0) == p.size(0) && I.size(2) == p.size(2) && I.size(3) == p.size(3),
              "fastdehaze::guided_filter: I and p must have the same B, H, W");
  TORCH_CHECK(I.scalar_type() == p.scalar_type(), "fastdehaze::guided_filter: I must have p's dtype");
  TORCH_CHECK(r >= 0, "fastdehaze::guided_filter: r must be >= 0");
  check_cpu(I, "I");
  check_cpu(p, "p");
  auto Ic = I.contiguous(), pc = p.contiguous();
  auto out = at::empty_like(pc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t B = p.size(0), C = p.size(1), G = I.size(1), H = p.size(2), W = p.size(3), HW = H * W;
  const int64_t P = B * C;  // planes = (image, src channel)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "guided_filter_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const op_t e = static_cast<op_t>(eps);
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* pp = pc.const_data_ptr<scalar_t>();
    scalar_t* qp = out.mutable_data_ptr<scalar_t>();
    const bool nans = has_nonfinite(Ip, B * G * HW) || has_nonfinite(pp, P * HW);
    std::atomic<bool> ab_bad{false};  // a or b not finite (NaN/inf input, or var + eps == 0)
    if (G == 1) {
      // pass 1: means of I, p, I p, I I -> a, b (stored [P][H][W][2]); pass 2: means of a, b -> q
      auto ab_t = at::empty({P * HW * 2}, pc.options().dtype(c10::CppTypeToScalarType<op_t>::value));
      op_t* ab = ab_t.mutable_data_ptr<op_t>();  // a, b interleaved per pixel (not zero-filled)
      box_engine<4, op_t>(
          P, H, W, r, false, nans,
          [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t* line) {
            const scalar_t* Ir = Ip + (pl / C) * HW + y * W;
            const scalar_t* pr = pp + pl * HW + y * W;
            for (int64_t x = xa; x < xb; ++x) {
              const op_t iv = static_cast<op_t>(Ir[x]), pv = static_cast<op_t>(pr[x]);
              op_t* l = line + (x - xa) * 4;
              l[0] = iv, l[1] = pv, l[2] = iv * pv, l[3] = iv * iv;
            }
            return static_cast<const op_t*>(line);
          },
          [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
            op_t* o = ab + (pl * HW + y * W + x0) * 2;
            op_t z = 0;
            for (int64_t i = 0; i < n; ++i) {
              fm::gray_coeffs(m[i * 4 + 0], m[i * 4 + 1], m[i * 4 + 2], m[i * 4 + 3], e, o[i * 2], o[i * 2 + 1]);
              z += o[i * 2] * op_t(0) + o[i * 2 + 1] * op_t(0);
            }
            if (z != op_t(0)) ab_bad.store(true, std::memory_order_relaxed);
          });
      box_engine<2, op_t>(
          P, H, W, r, false, nans || ab_bad.load(),
          [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t*) {
            return static_cast<const op_t*>(ab + (pl * HW + y * W + xa) * 2);  // read in place
          },
          [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
            const scalar_t* Ir = Ip + (pl / C) * HW + y * W + x0;
            scalar_t* q = qp + pl * HW + y * W + x0;
            for (int64_t i = 0; i < n; ++i) q[i] = static_cast<scalar_t>(m[i * 2] * static_cast<op_t>(Ir[i]) + m[i * 2 + 1]);
          });
    } else {
      // pass 1: 13 means (I0..2, the 6 products I_i I_j, p, I_g p) -> a0..2, b; pass 2: 4 means -> q
      auto ab_t = at::empty({P * HW * 4}, pc.options().dtype(c10::CppTypeToScalarType<op_t>::value));
      op_t* ab = ab_t.mutable_data_ptr<op_t>();  // a, b interleaved per pixel (not zero-filled)
      box_engine<13, op_t>(
          P, H, W, r, false, nans,
          [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t* line) {
            const scalar_t* Ir = Ip + (pl / C) * 3 * HW + y * W;
            const scalar_t* pr = pp + pl * HW + y * W;
            for (int64_t x = xa; x < xb; ++x) {
              const op_t i0 = static_cast<op_t>(Ir[x]), i1 = static_cast<op_t>(Ir[HW + x]),
                         i2 = static_cast<op_t>(Ir[2 * HW + x]), pv = static_cast<op_t>(pr[x]);
              op_t* l = line + (x - xa) * 13;
              l[0] = i0, l[1] = i1, l[2] = i2;
              l[3] = i0 * i0, l[4] = i0 * i1, l[5] = i0 * i2, l[6] = i1 * i1, l[7] = i1 * i2, l[8] = i2 * i2;
              l[9] = pv, l[10] = i0 * pv, l[11] = i1 * pv, l[12] = i2 * pv;
            }
            return static_cast<const op_t*>(line);
          },
          [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
            op_t* o = ab + (pl * HW + y * W + x0) * 4;
            op_t z = 0;
            for (int64_t i = 0; i < n; ++i) {
              const op_t* mm = m + i * 13;
              fm::color_coeffs(mm, mm[9], mm + 10, mm + 3, e, o + i * 4, o[i * 4 + 3]);
              z += (o[i * 4] + o[i * 4 + 1] + o[i * 4 + 2] + o[i * 4 + 3]) * op_t(0);
            }
            if (z != op_t(0)) ab_bad.store(true, std::memory_order_relaxed);
          });
      box_engine<4, op_t>(
          P, H, W, r, false, nans || ab_bad.load(),
          [&](int64_t pl, int64_t y, int64_t xa, int64_t xb, op_t*) {
            return static_cast<const op_t*>(ab + (pl * HW + y * W + xa) * 4);  // read in place
          },
          [&](int64_t pl, int64_t y, int64_t x0, int64_t n, const op_t* m) {
            const scalar_t* Ir = Ip + (pl / C) * 3 * HW + y * W + x0;
            scalar_t* q = qp + pl * HW + y * W + x0;
            for (int64_t i = 0; i < n; ++i) {
              const op_t* mm = m + i * 4;
              q[i] = static_cast<scalar_t>(mm[0] * static_cast<op_t>(Ir[i]) + mm[1] * static_cast<op_t>(Ir[HW + i]) +
                                           mm[2] * static_cast<op_t>(Ir[2 * HW + i]) + mm[3]);
            }
          });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("box_filter", &box_filter_cpu);
  m.impl("box_filter_backward", &box_filter_backward_cpu);
  m.impl("guided_filter", &guided_filter_cpu);
}

}  // namespace fastdehaze
