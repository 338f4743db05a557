// C++ CPU kernels of the box and guided filters (SPEC section 2).
//
// One engine (box_engine<K>) box-filters K planes of one image at once: a horizontal pass over
// rows (parallel over rows) writes the K row means of every pixel into a scratch buffer laid out
// [y][x][k], then a vertical pass over strips of columns (parallel over strips) keeps K float64
// running sums per column and hands the K box means of each row segment to an epilogue. Both
// passes use float64 running sums restarted on every row / column strip, so the error stays at
// rounding level on multi-megapixel images. The epilogue fuses what follows the means: for the
// gray guided filter the four means of I, p, I*p, I*I give a and b in pass 1 (K = 4), and the
// two means of a and b give q in pass 2 (K = 2), so no intermediate but a, b is stored.
// Non-finite inputs: a line holding NaN/inf takes a slower path that counts non-finite values in
// the window and writes NaN there (same rule as the reference).
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
constexpr int64_t kStrip = 256;  // columns per task of the vertical pass

std::vector<double> inverse_counts(int64_t n, int64_t r) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = 1.0 / static_cast<double>(fm::box_count(i, n, r));
  return v;
}

// Horizontal pass of one row of K interleaved lines s[x*K + k] (float64) into out[x*K + k].
// forward: out = window sum * icw[x]; adjoint: s was pre-scaled by icw and out = window sum.
template <int K, bool NANS, typename op_t>
void hrow(const double* s, const unsigned char* bad, op_t* out, int64_t W, int64_t r, const double* icw, bool adjoint) {
  double acc[K];
  int cnt[K];
  for (int k = 0; k < K; ++k) acc[k] = 0, cnt[k] = 0;
  const int64_t e = std::min(r, W - 1);
  for (int64_t x = 0; x <= e; ++x)
    for (int k = 0; k < K; ++k) {
      acc[k] += s[x * K + k];
      if (NANS) cnt[k] += bad[x * K + k];
    }
  for (int64_t x = 0; x < W; ++x) {
    const double sc = adjoint ? 1.0 : icw[x];
    for (int k = 0; k < K; ++k) {
      op_t v = static_cast<op_t>(acc[k] * sc);
      if (NANS && cnt[k] > 0) v = static_cast<op_t>(NAN);
      out[x * K + k] = v;
    }
    if (x + r + 1 < W)
      for (int k = 0; k < K; ++k) {
        acc[k] += s[(x + r + 1) * K + k];
        if (NANS) cnt[k] += bad[(x + r + 1) * K + k];
      }
    if (x - r >= 0)
      for (int k = 0; k < K; ++k) {
        acc[k] -= s[(x - r) * K + k];
        if (NANS) cnt[k] -= bad[(x - r) * K + k];
      }
  }
}

// Vertical pass over the columns [x0, x0 + n) of tmp ([H][W][K]); emit(y, x0, n, m) receives the
// K means of each pixel of the row segment as m[(x - x0) * K + k].
template <int K, bool NANS, typename op_t, typename Emit>
void vstrip(const op_t* tmp, int64_t H, int64_t W, int64_t r, int64_t x0, int64_t n, const double* ich, bool adjoint,
            Emit& emit) {
  const int64_t L = n * K;
  std::vector<double> acc(L, 0.0);
  std::vector<int> cnt(NANS ? L : 0, 0);
  std::vector<op_t> m(L);
  auto add = [&](int64_t yy, double sgn) {
    const op_t* row = tmp + (yy * W + x0) * K;
    const double sc = adjoint ? sgn * ich[yy] : sgn;
    if (NANS) {
      const int isg = sgn > 0 ? 1 : -1;
      for (int64_t j = 0; j < L; ++j) {
        const double v = static_cast<double>(row[j]);
        const bool b = v != v;
        acc[j] += b ? 0.0 : v * sc;
        cnt[j] += b ? isg : 0;
      }
    } else {
      for (int64_t j = 0; j < L; ++j) acc[j] += static_cast<double>(row[j]) * sc;
    }
  };
  const int64_t e = std::min(r, H - 1);
  for (int64_t yy = 0; yy <= e; ++yy) add(yy, 1.0);
  for (int64_t y = 0; y < H; ++y) {
    const double sc = adjoint ? 1.0 : ich[y];
    for (int64_t j = 0; j < L; ++j) m[j] = static_cast<op_t>(acc[j] * sc);
    if (NANS)
      for (int64_t j = 0; j < L; ++j)
        if (cnt[j] > 0) m[j] = static_cast<op_t>(NAN);
    emit(y, x0, n, m.data());
    if (y + r + 1 < H) add(y + r + 1, 1.0);
    if (y - r >= 0) add(y - r, -1.0);
  }
}

// Box-filters the K planes given row by row by load_row(y, line) (line[x * K + k], op_t) and
// passes the means to emit (see vstrip). adjoint: the box sum of value / count instead.
template <int K, typename op_t, typename LoadRow, typename Emit>
void box_engine(int64_t H, int64_t W, int64_t r, bool adjoint, LoadRow load_row, Emit emit) {
  const std::vector<double> icw = inverse_counts(W, r), ich = inverse_counts(H, r);
  std::vector<op_t> tmp(static_cast<size_t>(H * W * K));
  std::atomic<bool> any_bad{false};
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, W * K));
  at::parallel_for(0, H, grain, [&](int64_t y0, int64_t y1) {
    std::vector<op_t> line(W * K);
    std::vector<double> s(W * K);
    std::vector<unsigned char> bad;
    for (int64_t y = y0; y < y1; ++y) {
      load_row(y, line.data());
      double z = 0.0;
      for (int64_t x = 0; x < W; ++x)
        for (int k = 0; k < K; ++k) {
          const double v = static_cast<double>(line[x * K + k]);
          s[x * K + k] = adjoint ? v * icw[x] : v;
          z += v * 0.0;  // NaN iff some value is NaN or +-inf
        }
      op_t* out = tmp.data() + y * W * K;
      if (z == 0.0) {
        hrow<K, false>(s.data(), nullptr, out, W, r, icw.data(), adjoint);
      } else {
        any_bad.store(true, std::memory_order_relaxed);
        bad.resize(W * K);
        for (int64_t j = 0; j < W * K; ++j) {
          bad[j] = std::isfinite(s[j]) ? 0 : 1;
          if (bad[j]) s[j] = 0.0;
        }
        hrow<K, true>(s.data(), bad.data(), out, W, r, icw.data(), adjoint);
      }
    }
  });
  const bool nans = any_bad.load();
  const int64_t nstrip = (W + kStrip - 1) / kStrip;
  at::parallel_for(0, nstrip, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t si = s0; si < s1; ++si) {
      const int64_t x0 = si * kStrip, n = std::min(kStrip, W - x0);
      if (nans) vstrip<K, true>(tmp.data(), H, W, r, x0, n, ich.data(), adjoint, emit);
      else vstrip<K, false>(tmp.data(), H, W, r, x0, n, ich.data(), adjoint, emit);
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
  const int64_t P = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_filter_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    for (int64_t pl = 0; pl < P; ++pl) {
      const scalar_t* xp = xc.const_data_ptr<scalar_t>() + pl * H * W;
      scalar_t* op = out.mutable_data_ptr<scalar_t>() + pl * H * W;
      box_engine<1, op_t>(
          H, W, r, adjoint,
          [&](int64_t y, op_t* line) {
            for (int64_t i = 0; i < W; ++i) line[i] = static_cast<op_t>(xp[y * W + i]);
          },
          [&](int64_t y, int64_t x0, int64_t n, const op_t* m) {
            for (int64_t i = 0; i < n; ++i) op[y * W + x0 + i] = static_cast<scalar_t>(m[i]);
          });
    }
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "guided_filter_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const op_t e = static_cast<op_t>(eps);
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* Ib = Ic.const_data_ptr<scalar_t>() + b * G * HW;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* pp = pc.const_data_ptr<scalar_t>() + (b * C + c) * HW;
        scalar_t* qp = out.mutable_data_ptr<scalar_t>() + (b * C + c) * HW;
        if (G == 1) {
          std::vector<op_t> ab(static_cast<size_t>(HW * 2));
          box_engine<4, op_t>(
              H, W, r, false,
              [&](int64_t y, op_t* line) {
                for (int64_t x = 0; x < W; ++x) {
                  const op_t iv = static_cast<op_t>(Ib[y * W + x]), pv = static_cast<op_t>(pp[y * W + x]);
                  line[x * 4 + 0] = iv;
                  line[x * 4 + 1] = pv;
                  line[x * 4 + 2] = iv * pv;
                  line[x * 4 + 3] = iv * iv;
                }
              },
              [&](int64_t y, int64_t x0, int64_t n, const op_t* m) {
                op_t* o = ab.data() + (y * W + x0) * 2;
                for (int64_t i = 0; i < n; ++i)
                  fm::gray_coeffs(m[i * 4 + 0], m[i * 4 + 1], m[i * 4 + 2], m[i * 4 + 3], e, o[i * 2], o[i * 2 + 1]);
              });
          box_engine<2, op_t>(
              H, W, r, false,
              [&](int64_t y, op_t* line) { std::copy(ab.data() + y * W * 2, ab.data() + (y + 1) * W * 2, line); },
              [&](int64_t y, int64_t x0, int64_t n, const op_t* m) {
                for (int64_t i = 0; i < n; ++i) {
                  const int64_t o = y * W + x0 + i;
                  qp[o] = static_cast<scalar_t>(m[i * 2] * static_cast<op_t>(Ib[o]) + m[i * 2 + 1]);
                }
              });
        } else {
          std::vector<op_t> ab(static_cast<size_t>(HW * 4));
          box_engine<13, op_t>(
              H, W, r, false,
              [&](int64_t y, op_t* line) {
                for (int64_t x = 0; x < W; ++x) {
                  const int64_t o = y * W + x;
                  const op_t i0 = static_cast<op_t>(Ib[o]), i1 = static_cast<op_t>(Ib[HW + o]),
                             i2 = static_cast<op_t>(Ib[2 * HW + o]), pv = static_cast<op_t>(pp[o]);
                  op_t* l = line + x * 13;
                  l[0] = i0, l[1] = i1, l[2] = i2;
                  l[3] = i0 * i0, l[4] = i0 * i1, l[5] = i0 * i2, l[6] = i1 * i1, l[7] = i1 * i2, l[8] = i2 * i2;
                  l[9] = pv, l[10] = i0 * pv, l[11] = i1 * pv, l[12] = i2 * pv;
                }
              },
              [&](int64_t y, int64_t x0, int64_t n, const op_t* m) {
                op_t* o = ab.data() + (y * W + x0) * 4;
                for (int64_t i = 0; i < n; ++i) {
                  const op_t* mm = m + i * 13;
                  fm::color_coeffs(mm, mm[9], mm + 10, mm + 3, e, o + i * 4, o[i * 4 + 3]);
                }
              });
          box_engine<4, op_t>(
              H, W, r, false,
              [&](int64_t y, op_t* line) { std::copy(ab.data() + y * W * 4, ab.data() + (y + 1) * W * 4, line); },
              [&](int64_t y, int64_t x0, int64_t n, const op_t* m) {
                for (int64_t i = 0; i < n; ++i) {
                  const int64_t o = y * W + x0 + i;
                  const op_t* mm = m + i * 4;
                  qp[o] = static_cast<scalar_t>(mm[0] * static_cast<op_t>(Ib[o]) + mm[1] * static_cast<op_t>(Ib[HW + o]) +
                                                mm[2] * static_cast<op_t>(Ib[2 * HW + o]) + mm[3]);
                }
              });
        }
      }
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
