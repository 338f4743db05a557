// C++ CPU kernels of the dark channel prior ops (SPEC section 2).
//
// Window min/max: van Herk / Gil-Werman (csrc/include/fastdehaze/dcp_math.h), 3 comparisons per
// element whatever the patch. Forward: the channel min (or min of I_c / A_c for transmission) of a
// row is formed in a per-thread buffer and filtered along the row (tasks = rows); the column
// pass then runs on strips of kStrip columns (tasks = strips), vectorised across the strip.
// Backward recomputes the argument of each window's extremum by the same passes carrying
// (value, position) pairs, then scatters the gradients (one task per image: deterministic).
// atmospheric_light: radix select on order-preserving keys (16-bit digits: 2 histogram passes
// for float, 4 for double), then one pass that sums the selected pixels (ties by lower index).
// dehaze_dcp: the whole pipeline, single-channel maps in the compute type (float32, or float64 for
// float64 input): dark channel (and a NaN/inf check of I) -> A -> coarse transmission (over the dark
// channel's map) -> the gray guided filter of the filters family (fastdehaze/guided_filter_cpu.h),
// with the luma guide formed from I inside its passes and clamp + recovery in its last epilogue.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "fastdehaze/cpu_utils.h"
#include "fastdehaze/dcp_math.h"
#include "fastdehaze/guided_filter_cpu.h"

namespace fastdehaze {
namespace {

namespace dm = dcp_math;
constexpr int64_t kStrip = 256;

template <bool IS_MAX, typename M>
inline M ident() {
  return IS_MAX ? -std::numeric_limits<M>::infinity() : std::numeric_limits<M>::infinity();
}

// ---- values-only running extremum ------------------------------------------------------------

// out[x] = ext of v over [x-r, x+r] clipped to [0, n-1]; h: scratch of n.
template <bool IS_MAX, typename M>
void line_ext(const M* v, M* out, int64_t n, int64_t r, M* h) {
  const int64_t w = 2 * r + 1;
  for (int64_t bs = ((n - 1) / w) * w; bs >= 0; bs -= w) {
    const int64_t be = std::min(bs + w, n) - 1;
    h[be] = v[be];
    for (int64_t p = be - 1; p >= bs; --p) h[p] = dm::ext<IS_MAX>(v[p], h[p + 1]);
  }
  M g = v[0];
  int64_t pb = 0;  // p % w
  for (int64_t p = 0; p < n; ++p, ++pb) {
    if (pb == w) pb = 0;
    g = pb == 0 ? v[p] : dm::ext<IS_MAX>(g, v[p]);
    const int64_t x = p - r;
    if (x < 0) continue;
    const int64_t lo = p - 2 * r;
    out[x] = (lo <= 0 || pb == w - 1) ? g : dm::ext<IS_MAX>(h[lo], g);
  }
  const int64_t last_blk = (n - 1) / w;
  for (int64_t x = std::max<int64_t>(0, n - r); x < n; ++x) {
    const int64_t lo = dm::win_lo(x, r);
    if (lo / w == last_blk) out[x] = (lo % w == 0) ? g : h[lo];
    else out[x] = dm::ext<IS_MAX>(h[lo], g);
  }
}

// Small windows (r <= kSmallR): out[x] = ext of v over [x-r, x+r] clipped, by doubling on padded
// copies (vectorises): u = v with r identities on both sides; after k steps a[i] = ext of
// u[i .. i + 2^k - 1]; with s = 2^k the largest power of two <= w = 2r + 1, out[x] = ext(a[x],
// a[x + w - s]). Same values as line_ext (an extremum is exact; NaN propagates either way).
// u, t: scratch of n + 2r each; u[r .. r + n) already holds v.
constexpr int64_t kSmallR = 8;
template <bool IS_MAX, typename M>
void line_ext_small(M* __restrict u, M* __restrict t, M* __restrict out, int64_t n, int64_t r) {
  const int64_t w = 2 * r + 1, len = n + 2 * r;
  for (int64_t i = 0; i < r; ++i) u[i] = u[r + n + i] = ident<IS_MAX, M>();
  int64_t s = 1;
  M *a = u, *b = t;
  for (; 2 * s <= w; s *= 2) {
    for (int64_t i = 0; i + 2 * s <= len; ++i) b[i] = dm::ext<IS_MAX>(a[i], a[i + s]);  // a: spans of s
    std::swap(a, b);
  }
  const int64_t d = w - s;
  for (int64_t x = 0; x < n; ++x) out[x] = dm::ext<IS_MAX>(a[x], a[x + d]);
}

// The same down the columns [x0, x0+S) of R [H, W], vectorised across the strip; store(y, vals).
template <bool IS_MAX, typename M, typename Store>
void strip_ext(const M* R, int64_t H, int64_t W, int64_t x0, int64_t S, int64_t r, M* h, M* g, M* out,
               const Store& store) {
  const int64_t w = 2 * r + 1;
  auto v = [&](int64_t p) { return R + p * W + x0; };
  for (int64_t bs = ((H - 1) / w) * w; bs >= 0; bs -= w) {
    const int64_t be = std::min(bs + w, H) - 1;
    std::copy(v(be), v(be) + S, h + be * S);
    for (int64_t p = be - 1; p >= bs; --p) {
      const M* vp = v(p);
      const M* hn = h + (p + 1) * S;
      M* hp = h + p * S;
      for (int64_t j = 0; j < S; ++j) hp[j] = dm::ext<IS_MAX>(vp[j], hn[j]);
    }
  }
  int64_t pb = 0;
  for (int64_t p = 0; p < H; ++p, ++pb) {
    if (pb == w) pb = 0;
    const M* vp = v(p);
    if (pb == 0) std::copy(vp, vp + S, g);
    else
      for (int64_t j = 0; j < S; ++j) g[j] = dm::ext<IS_MAX>(g[j], vp[j]);
    const int64_t y = p - r;
    if (y < 0) continue;
    const int64_t lo = p - 2 * r;
    if (lo <= 0 || pb == w - 1) {
      store(y, g);
    } else {
      const M* hl = h + lo * S;
      for (int64_t j = 0; j < S; ++j) out[j] = dm::ext<IS_MAX>(hl[j], g[j]);
      store(y, static_cast<const M*>(out));
    }
  }
  const int64_t last_blk = (H - 1) / w;
  for (int64_t y = std::max<int64_t>(0, H - r); y < H; ++y) {
    const int64_t lo = dm::win_lo(y, r);
    const M* hl = h + lo * S;
    if (lo / w == last_blk) {
      store(y, (lo % w == 0) ? static_cast<const M*>(g) : hl);
    } else {
      for (int64_t j = 0; j < S; ++j) out[j] = dm::ext<IS_MAX>(hl[j], g[j]);
      store(y, static_cast<const M*>(out));
    }
  }
}

// 2-D window extremum of one image: row(y, buf) fills the pre-window row y (channel min, ...);
// R is an [H, W] scratch; store(y, x0, vals, n) receives each output row segment.
template <bool IS_MAX, typename M, typename RowFn, typename Store>
void window2d(int64_t H, int64_t W, int64_t r, M* R, const RowFn& row, const Store& store) {
  at::parallel_for(0, H, 16, [&](int64_t y0, int64_t y1) {
    std::vector<M> buf(W + 2 * r), h(W + 2 * r);
    for (int64_t y = y0; y < y1; ++y) {
      if (r <= kSmallR) {
        row(y, buf.data() + r);
        line_ext_small<IS_MAX>(buf.data(), h.data(), R + y * W, W, r);
      } else {
        row(y, buf.data());
        line_ext<IS_MAX>(buf.data(), R + y * W, W, r, h.data());
      }
    }
  });
  // column strips of at most kStrip columns, as many as a multiple of the threads when there are
  // several (equal work per thread: 2708 columns make 12 strips of 232, not 11 of 256)
  int64_t nstrip = (W + kStrip - 1) / kStrip, SW = kStrip;
  const int64_t T = at::get_num_threads();
  if (nstrip > 1 && T > 1 && nstrip % T != 0) {
    nstrip = (nstrip + T - 1) / T * T;
    SW = std::min<int64_t>(kStrip, ((W + nstrip - 1) / nstrip + 15) / 16 * 16);
    nstrip = (W + SW - 1) / SW;
  }
  at::parallel_for(0, nstrip, 1, [&](int64_t s0, int64_t s1) {
    std::vector<M> h(H * SW), g(SW), out(SW);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t x0 = s * SW, S = std::min(SW, W - x0);
      strip_ext<IS_MAX>(R, H, W, x0, S, r, h.data(), g.data(), out.data(),
                        [&](int64_t y, const M* vals) { store(y, x0, vals, S); });
    }
  });
}

// Pre-window row: ext over channels of I (optionally times scale[c]).
template <bool IS_MAX, typename scalar_t, typename M>
inline void channel_row(const scalar_t* I, int64_t C, int64_t HW, int64_t off, int64_t W, const M* scale, M* buf) {
  const scalar_t* p0 = I + off;
  if (scale) {
    const M s0 = scale[0];
    for (int64_t x = 0; x < W; ++x) buf[x] = static_cast<M>(p0[x]) * s0;
    for (int64_t c = 1; c < C; ++c) {
      const scalar_t* pc = I + c * HW + off;
      const M sc = scale[c];
      for (int64_t x = 0; x < W; ++x) buf[x] = dm::ext<IS_MAX>(buf[x], static_cast<M>(pc[x]) * sc);
    }
  } else {
    for (int64_t x = 0; x < W; ++x) buf[x] = static_cast<M>(p0[x]);
    for (int64_t c = 1; c < C; ++c) {
      const scalar_t* pc = I + c * HW + off;
      for (int64_t x = 0; x < W; ++x) buf[x] = dm::ext<IS_MAX>(buf[x], static_cast<M>(pc[x]));
    }
  }
}

void check_image(const at::Tensor& I, const char* op) {
  TORCH_CHECK(I.dim() == 4, "fastdehaze::", op, ": I must be [B,C,H,W], got ", I.sizes());
  TORCH_CHECK(I.size(1) >= 1, "fastdehaze::", op, ": I must have at least one channel");
  check_cpu(I, "I");
}

void check_patch(int64_t patch, const char* op) {
  TORCH_CHECK(patch > 0 && patch % 2 == 1, "fastdehaze::", op, ": patch must be a positive odd integer, got ", patch);
}

// ---- dark / bright channel and transmission --------------------------------------------------

// out = post(window ext over channels of I * scale): [B,1,H,W] in I's dtype.
template <bool IS_MAX>
at::Tensor channel_window_cpu(const at::Tensor& I, int64_t patch, const at::Tensor* A, double omega, const char* op) {
  check_image(I, op);
  check_patch(patch, op);
  auto Ic = I.contiguous();
  const int64_t B = I.size(0), C = I.size(1), H = I.size(2), W = I.size(3), HW = H * W;
  auto out = at::empty({B, 1, H, W}, I.options());
  if (out.numel() == 0) return out;
  const int64_t r = patch / 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "channel_window_cpu", [&] {
    using M = opmath_t<scalar_t>;
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    std::vector<M> R(HW), scale;
    at::Tensor Ac;
    if (A) {
      Ac = A->contiguous();
      TORCH_CHECK(Ac.numel() == B * C && Ac.scalar_type() == c10::CppTypeToScalarType<M>::value,
                  "fastdehaze::", op, ": A must be [B,C] in the compute dtype");
      scale.resize(C);
    }
    const M om = static_cast<M>(omega);
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* Ib = Ip + b * C * HW;
      if (A) {
        const M* Ap = Ac.const_data_ptr<M>() + b * C;
        for (int64_t c = 0; c < C; ++c) scale[c] = dm::safe_inv_A(Ap[c]);
      }
      const M* sp = A ? scale.data() : nullptr;
      scalar_t* ob = op_ + b * HW;
      window2d<IS_MAX, M>(
          H, W, r, R.data(), [&](int64_t y, M* buf) { channel_row<IS_MAX>(Ib, C, HW, y * W, W, sp, buf); },
          [&](int64_t y, int64_t x0, const M* vals, int64_t n) {
            scalar_t* o = ob + y * W + x0;
            if (A)
              for (int64_t j = 0; j < n; ++j) o[j] = static_cast<scalar_t>(dm::transmission(vals[j], om));
            else
              for (int64_t j = 0; j < n; ++j) o[j] = static_cast<scalar_t>(vals[j]);
          });
    }
  });
  return out;
}

at::Tensor dark_channel_cpu(const at::Tensor& I, int64_t patch) {
  return channel_window_cpu<false>(I, patch, nullptr, 0.0, "dark_channel");
}
at::Tensor bright_channel_cpu(const at::Tensor& I, int64_t patch) {
  return channel_window_cpu<true>(I, patch, nullptr, 0.0, "bright_channel");
}
at::Tensor transmission_cpu(const at::Tensor& I, const at::Tensor& A, double omega, int64_t patch) {
  return channel_window_cpu<false>(I, patch, &A, omega, "transmission");
}

// ---- backward: (value, position) pairs --------------------------------------------------------

// Running extremum with its position on a strided line: ov/oa[x * so] = value/position of the
// first extremum of [x-r, x+r] clipped; hv/ha: scratch of n.
template <bool IS_MAX, typename M>
void line_ext_arg(const M* v, int64_t sv, int64_t n, int64_t r, M* ov, int32_t* oa, int64_t so, M* hv, int32_t* ha) {
  const int64_t w = 2 * r + 1;
  for (int64_t bs = ((n - 1) / w) * w; bs >= 0; bs -= w) {
    const int64_t be = std::min(bs + w, n) - 1;
    hv[be] = v[be * sv];
    ha[be] = static_cast<int32_t>(be);
    for (int64_t p = be - 1; p >= bs; --p) {
      const M vp = v[p * sv];
      if (dm::better<IS_MAX>(hv[p + 1], vp)) {
        hv[p] = hv[p + 1];
        ha[p] = ha[p + 1];
      } else {
        hv[p] = vp;
        ha[p] = static_cast<int32_t>(p);
      }
    }
  }
  M gv = v[0];
  int32_t ga = 0;
  auto emit = [&](int64_t x, int64_t lo, bool same_blk) {
    if (same_blk) {
      if (lo % w == 0) { ov[x * so] = gv; oa[x * so] = ga; }
      else { ov[x * so] = hv[lo]; oa[x * so] = ha[lo]; }
    } else if (dm::better<IS_MAX>(gv, hv[lo])) {
      ov[x * so] = gv; oa[x * so] = ga;
    } else {
      ov[x * so] = hv[lo]; oa[x * so] = ha[lo];
    }
  };
  for (int64_t p = 0; p < n; ++p) {
    const M vp = v[p * sv];
    if (p % w == 0 || dm::better<IS_MAX>(vp, gv)) { gv = vp; ga = static_cast<int32_t>(p); }
    const int64_t x = p - r;
    if (x < 0) continue;
    const int64_t lo = dm::win_lo(x, r);
    emit(x, lo, lo / w == p / w);
  }
  for (int64_t x = std::max<int64_t>(0, n - r); x < n; ++x) {
    const int64_t lo = dm::win_lo(x, r);
    emit(x, lo, lo / w == (n - 1) / w);
  }
}

template <bool IS_MAX>
at::Tensor channel_window_backward_cpu(const at::Tensor& grad, const at::Tensor& I, int64_t patch, const char* op) {
  check_image(I, op);
  check_patch(patch, op);
  auto Ic = I.contiguous();
  auto gc = grad.contiguous();
  const int64_t B = I.size(0), C = I.size(1), H = I.size(2), W = I.size(3), HW = H * W;
  TORCH_CHECK(gc.numel() == B * HW, "fastdehaze::", op, ": grad must be [B,1,H,W]");
  TORCH_CHECK(H < (int64_t(1) << 31) && W < (int64_t(1) << 31), "fastdehaze::", op, ": image too large");
  auto gI = at::zeros({B, C, H, W}, I.options());
  if (Ic.numel() == 0) return gI;
  const int64_t r = patch / 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "channel_window_backward_cpu", [&] {
    using M = opmath_t<scalar_t>;
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* gIp = gI.mutable_data_ptr<scalar_t>();
    std::vector<M> Rv(HW), Cv(HW);
    std::vector<int32_t> Rx(HW), Ya(HW);
    std::vector<int16_t> Carg(HW);
    std::vector<M> acc(C * HW);
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* Ib = Ip + b * C * HW;
      // rows: lowest extremal channel, then the first extremum along the row
      at::parallel_for(0, H, 16, [&](int64_t y0, int64_t y1) {
        std::vector<M> buf(W), hv(W);
        std::vector<int32_t> ha(W);
        for (int64_t y = y0; y < y1; ++y) {
          for (int64_t x = 0; x < W; ++x) {
            M best = static_cast<M>(Ib[y * W + x]);
            int16_t bc = 0;
            for (int64_t c = 1; c < C; ++c) {
              const M v = static_cast<M>(Ib[c * HW + y * W + x]);
              if (dm::better<IS_MAX>(v, best)) { best = v; bc = static_cast<int16_t>(c); }
            }
            buf[x] = best;
            Carg[y * W + x] = bc;
          }
          line_ext_arg<IS_MAX>(buf.data(), 1, W, r, Rv.data() + y * W, Rx.data() + y * W, 1, hv.data(), ha.data());
        }
      });
      // columns: the first (lowest row) extremum of the row results
      at::parallel_for(0, W, 16, [&](int64_t x0, int64_t x1) {
        std::vector<M> hv(H);
        std::vector<int32_t> ha(H);
        for (int64_t x = x0; x < x1; ++x)
          line_ext_arg<IS_MAX>(Rv.data() + x, W, H, r, Cv.data() + x, Ya.data() + x, W, hv.data(), ha.data());
      });
      std::fill(acc.begin(), acc.end(), M(0));
      const scalar_t* gb = gp + b * HW;
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t x = i % W;
        const int64_t ys = Ya[i];
        const int64_t xs = Rx[ys * W + x];
        const int64_t cs = Carg[ys * W + xs];
        acc[cs * HW + ys * W + xs] += static_cast<M>(gb[i]);
      }
      scalar_t* gIb = gIp + b * C * HW;
      at::parallel_for(0, C * HW, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) gIb[i] = static_cast<scalar_t>(acc[i]);
      });
    }
  });
  return gI;
}

at::Tensor dark_channel_backward_cpu(const at::Tensor& grad, const at::Tensor& I, int64_t patch) {
  return channel_window_backward_cpu<false>(grad, I, patch, "dark_channel_backward");
}
at::Tensor bright_channel_backward_cpu(const at::Tensor& grad, const at::Tensor& I, int64_t patch) {
  return channel_window_backward_cpu<true>(grad, I, patch, "bright_channel_backward");
}

// ---- atmospheric light ----------------------------------------------------------------------

// Mean of I [C, HW] over the k pixels with the largest key(dark) (ties: lower index first).
// key(i) gives the order key of pixel i.
template <typename K, typename scalar_t, typename KeyFn>
void top_k_mean(const KeyFn& key, const scalar_t* I, int64_t C, int64_t HW, int64_t k, double* sums) {
  k = std::min(k, HW);
  K prefix = 0, mask = 0;
  int64_t kk = k;  // rank still to find among the keys matching prefix
  const int nth = std::max(1, at::get_num_threads());
  const int64_t chunk = std::max<int64_t>(1 << 16, (HW + nth - 1) / nth);
  const int64_t nchunk = (HW + chunk - 1) / chunk;
  std::vector<uint32_t> hist(static_cast<size_t>(nchunk) * 65536);
  for (int shift = static_cast<int>(sizeof(K) * 8) - 16; shift >= 0; shift -= 16) {
    std::fill(hist.begin(), hist.end(), 0u);
    at::parallel_for(0, nchunk, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        uint32_t* hh = hist.data() + ch * 65536;
        const int64_t i1 = std::min(HW, (ch + 1) * chunk);
        for (int64_t i = ch * chunk; i < i1; ++i) {
          const K kv = key(i);
          if ((kv & mask) == prefix) ++hh[(kv >> shift) & 0xFFFF];
        }
      }
    });
    for (int64_t ch = 1; ch < nchunk; ++ch)
      for (int d = 0; d < 65536; ++d) hist[d] += hist[ch * 65536 + d];
    int64_t cum = 0;
    int d = 65535;
    for (; d > 0; --d) {
      if (cum + static_cast<int64_t>(hist[d]) >= kk) break;
      cum += hist[d];
    }
    kk -= cum;
    prefix |= static_cast<K>(d) << shift;
    mask |= static_cast<K>(0xFFFF) << shift;
  }
  const K thr = prefix;
  const int64_t need_eq = kk;  // pixels with key == thr to take, lowest index first
  std::vector<double> part(static_cast<size_t>(nchunk) * C, 0.0);
  std::vector<int64_t> neq(nchunk, 0);
  at::parallel_for(0, nchunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      double* ps = part.data() + ch * C;
      int64_t e = 0;
      const int64_t i1 = std::min(HW, (ch + 1) * chunk);
      for (int64_t i = ch * chunk; i < i1; ++i) {
        const K kv = key(i);
        if (kv > thr)
          for (int64_t c = 0; c < C; ++c) ps[c] += static_cast<double>(I[c * HW + i]);
        else if (kv == thr)
          ++e;
      }
      neq[ch] = e;
    }
  });
  for (int64_t c = 0; c < C; ++c) sums[c] = 0.0;
  int64_t taken = 0;
  for (int64_t ch = 0; ch < nchunk && taken < need_eq; ++ch) {
    if (neq[ch] == 0) continue;
    const int64_t i1 = std::min(HW, (ch + 1) * chunk);
    for (int64_t i = ch * chunk; i < i1 && taken < need_eq; ++i) {
      if (key(i) == thr) {
        for (int64_t c = 0; c < C; ++c) sums[c] += static_cast<double>(I[c * HW + i]);
        ++taken;
      }
    }
  }
  for (int64_t ch = 0; ch < nchunk; ++ch)
    for (int64_t c = 0; c < C; ++c) sums[c] += part[ch * C + c];
  for (int64_t c = 0; c < C; ++c) sums[c] /= static_cast<double>(k);
}

at::Tensor atmospheric_light_cpu(const at::Tensor& I, const at::Tensor& dark, int64_t k) {
  check_image(I, "atmospheric_light");
  const int64_t B = I.size(0), C = I.size(1), H = I.size(2), W = I.size(3), HW = H * W;
  TORCH_CHECK(dark.numel() == B * HW && dark.scalar_type() == I.scalar_type(),
              "fastdehaze::atmospheric_light: dark must be [B,1,H,W] with I's dtype");
  TORCH_CHECK(k >= 1, "fastdehaze::atmospheric_light: k must be >= 1");
  auto Ic = I.contiguous();
  auto dc = dark.contiguous();
  const auto cdt = I.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto A = at::empty({B, C}, I.options().dtype(cdt));
  if (B == 0) return A;
  if (HW == 0) return A.fill_(std::numeric_limits<double>::quiet_NaN());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "atmospheric_light_cpu", [&] {
    using M = opmath_t<scalar_t>;
    using K = typename dm::KeyOf<M>::type;
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    const scalar_t* dp = dc.const_data_ptr<scalar_t>();
    M* Ap = A.mutable_data_ptr<M>();
    std::vector<double> sums(C);
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* db = dp + b * HW;
      top_k_mean<K>([&](int64_t i) { return dm::order_key(static_cast<M>(db[i])); }, Ip + b * C * HW, C, HW, k,
                    sums.data());
      for (int64_t c = 0; c < C; ++c) Ap[b * C + c] = static_cast<M>(sums[c]);
    }
  });
  return A;
}

// Scratch of the fused DCP: a per-calling-thread workspace kept between calls (up to
// kKeepWorkspaceBytes, 3 H W compute-type values: 58 MB for a 4.9 MP float photo), so that a loop
// over photos does not fault in (and the kernel zero) fresh pages on every call; larger requests
// get a temporary buffer (held in *tmp) and leave the kept one as it is.
constexpr int64_t kKeepWorkspaceBytes = int64_t(256) << 20;
template <typename M>
M* dcp_workspace(int64_t n, at::Tensor* tmp, const at::TensorOptions& opt) {
  thread_local std::vector<M> ws;
  if (n * static_cast<int64_t>(sizeof(M)) > kKeepWorkspaceBytes) {
    *tmp = at::empty({n}, opt.dtype(c10::CppTypeToScalarType<M>::value));
    return tmp->mutable_data_ptr<M>();
  }
  if (static_cast<int64_t>(ws.size()) < n) {
    std::vector<M>().swap(ws);  // free the smaller one first (no two copies at once)
    ws.resize(n);
  }
  return ws.data();
}

// ---- the fused DCP pipeline ------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> dehaze_dcp_cpu(const at::Tensor& I, int64_t patch, double omega,
                                                              double top, int64_t r, double eps, double t0) {
  check_image(I, "dehaze_dcp");
  check_patch(patch, "dehaze_dcp");
  TORCH_CHECK(r >= 0, "fastdehaze::dehaze_dcp: r must be >= 0");
  auto Ic = I.contiguous();
  const int64_t B = I.size(0), C = I.size(1), H = I.size(2), W = I.size(3), HW = H * W;
  const auto cdt = I.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto J = at::empty({B, C, H, W}, I.options());
  auto T = at::empty({B, 1, H, W}, I.options());
  auto A = at::empty({B, C}, I.options().dtype(cdt));
  if (B == 0) return {J, T, A};
  if (HW == 0) {
    A.fill_(std::numeric_limits<double>::quiet_NaN());
    return {J, T, A};
  }
  const int64_t pr = patch / 2;
  const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::floor(top * static_cast<double>(HW))));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, I.scalar_type(), "dehaze_dcp_cpu", [&] {
    using M = opmath_t<scalar_t>;
    using K = typename dm::KeyOf<M>::type;
    const scalar_t* Ip = Ic.const_data_ptr<scalar_t>();
    scalar_t* Jp = J.mutable_data_ptr<scalar_t>();
    scalar_t* Tp = T.mutable_data_ptr<scalar_t>();
    M* Ap = A.mutable_data_ptr<M>();
    // scratch (dcp_workspace): R = window2d's row-pass map, later the guided filter's a, b
    // (2 HW); D = the dark channel, later the coarse transmission p (HW)
    at::Tensor tmp;
    M* R = dcp_workspace<M>(3 * HW, &tmp, I.options());
    M* D = R + 2 * HW;
    std::vector<double> sums(C);
    std::vector<M> inv(C);
    const M om = static_cast<M>(omega), e = static_cast<M>(eps), lo_t = static_cast<M>(t0);
    // luma guide of n pixels of row offset off (BT.601 for 3 channels, the channel mean otherwise)
    auto luma = [&](const scalar_t* Ib, int64_t off, int64_t n, M* __restrict out) {
      const scalar_t* r0 = Ib + off;
      if (C == 3) {
        const scalar_t *r1 = r0 + HW, *r2 = r0 + 2 * HW;
        for (int64_t x = 0; x < n; ++x)
          out[x] = dm::luma_r<M>() * static_cast<M>(r0[x]) + dm::luma_g<M>() * static_cast<M>(r1[x]) +
                            dm::luma_b<M>() * static_cast<M>(r2[x]);
      } else {
        for (int64_t x = 0; x < n; ++x) {
          M v = static_cast<M>(r0[x]);
          for (int64_t c = 1; c < C; ++c) v += static_cast<M>(r0[c * HW + x]);
          out[x] = C > 1 ? v / static_cast<M>(C) : v;
        }
      }
    };
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* Ib = Ip + b * C * HW;
      // 1. dark channel (and whether I holds NaN/inf, from the same read of I)
      std::atomic<bool> nonfinite{false};
      window2d<false, M>(
          H, W, pr, R,
          [&](int64_t y, M* buf) {
            channel_row<false, scalar_t, M>(Ib, C, HW, y * W, W, nullptr, buf);
            bool ok = true;
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t* rc = Ib + c * HW + y * W;
              for (int64_t x = 0; x < W; ++x) {
                const float v = static_cast<float>(rc[x]);
                ok &= (v - v == 0.f);  // false iff NaN or +-inf (an and-reduction: vectorises)
              }
            }
            if (!ok) nonfinite.store(true, std::memory_order_relaxed);
          },
          [&](int64_t y, int64_t x0, const M* vals, int64_t n) { std::copy(vals, vals + n, D + y * W + x0); });
      // 2. atmospheric light
      top_k_mean<K>([&](int64_t i) { return dm::order_key(D[i]); }, Ib, C, HW, k, sums.data());
      for (int64_t c = 0; c < C; ++c) {
        Ap[b * C + c] = static_cast<M>(sums[c]);
        inv[c] = dm::safe_inv_A(static_cast<M>(sums[c]));
      }
      // 3. coarse transmission p = 1 - omega dark(I / A), over D
      M* Pm = D;
      window2d<false, M>(
          H, W, pr, R, [&](int64_t y, M* buf) { channel_row<false, scalar_t, M>(Ib, C, HW, y * W, W, inv.data(), buf); },
          [&](int64_t y, int64_t x0, const M* vals, int64_t n) {
            M* pp = Pm + y * W + x0;
            for (int64_t j = 0; j < n; ++j) pp[j] = dm::transmission(vals[j], om);
          });
      // 4. guided filter of p with the luma guide (the shared core, fastdehaze/guided_filter_cpu.h;
      // the guide is formed from I inside both passes, never stored), then in pass 2's epilogue:
      // 5. q = mean(a) Y + mean(b), t = clamp(q, t0, 1), J = clamp((I - A) / t + A, 0, 1)
      scalar_t* Jb = Jp + b * C * HW;
      scalar_t* Tb = Tp + b * HW;
      const M* Ab = Ap + b * C;
      gf_cpu::gray_guided_filter<M>(
          1, H, W, r, e, nonfinite.load(), R,
          [&](int64_t, int64_t y, int64_t xa, int64_t xb, M* g, M* s) {
            luma(Ib, y * W + xa, xb - xa, g);
            std::copy(Pm + y * W + xa, Pm + y * W + xb, s);
          },
          [&](int64_t, int64_t y, int64_t x0, int64_t n, const M* m) {
            M yv[kStrip], tinv[kStrip];
            for (int64_t j0 = 0; j0 < n; j0 += kStrip) {
              const int64_t nn = std::min(kStrip, n - j0), off = y * W + x0 + j0;
              luma(Ib, off, nn, yv);
              const M* mm = m + 2 * j0;
              for (int64_t j = 0; j < nn; ++j) {
                M q = mm[2 * j] * yv[j] + mm[2 * j + 1];
                q = q < lo_t ? lo_t : (q > M(1) ? M(1) : q);
                Tb[off + j] = static_cast<scalar_t>(q);
                tinv[j] = M(1) / q;
              }
              for (int64_t c = 0; c < C; ++c) {
                const M Av = Ab[c];
                const scalar_t* ir = Ib + c * HW + off;
                scalar_t* jr = Jb + c * HW + off;
                for (int64_t j = 0; j < nn; ++j) {
                  M v = (static_cast<M>(ir[j]) - Av) * tinv[j] + Av;
                  v = v < M(0) ? M(0) : (v > M(1) ? M(1) : v);
                  jr[j] = static_cast<scalar_t>(v);
                }
              }
            }
          });
    }
  });
  return {J, T, A};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("dark_channel", &dark_channel_cpu);
  m.impl("bright_channel", &bright_channel_cpu);
  m.impl("dark_channel_backward", &dark_channel_backward_cpu);
  m.impl("bright_channel_backward", &bright_channel_backward_cpu);
  m.impl("atmospheric_light", &atmospheric_light_cpu);
  m.impl("transmission", &transmission_cpu);
  m.impl("dehaze_dcp", &dehaze_dcp_cpu);
}

}  // namespace fastdehaze
