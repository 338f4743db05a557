// C++ CPU kernels of the contrastive distance ops (SPEC section 4).
//
// Layout: the features of a layer are read in the memory order of the anchor (a dense anchor,
// e.g. channels_last, is not copied; a non-dense one, and a positive or negative with other
// strides, is copied once into the layout of at::empty_like(anchor), the gradient's). Work is
// split into tasks of kChunk elements over all layers at once (one flat task list, so the five
// VGG layers of very different sizes are one parallel loop); threads take runs of kGrab
// consecutive tasks from a shared counter (long sequential streams, and a descheduled thread on
// a shared machine does not hold up the others). Each task is walked as up to 4 interleaved
// runs (kSplit) when it has few streams, so that a thread keeps more cache misses in flight.
//
// Forward: one sweep per element over a, p and every negative (up to kMaxGroup negatives per
// sweep; more negatives take further sweeps over the L2-resident task of a), summing |a - p|
// and each |a - n_k| in vector-wide lane accumulators of the compute type (float for
// float/half/bfloat16, double for double) that are folded pairwise per task; the per-task
// partial sums are added in double, serially in task order (deterministic whatever the thread
// schedule or count).
// Backward: dL/da = cp sign(a - p) - sum_k cn w_k sign(a - n_k), sign(x) = (x > 0) - (x < 0)
// (branch-free, sign(0) = sign(NaN) = 0 as torch.sign's gradient of abs gives) with per-layer
// coefficients from contrastive_math.h, writing grad_a once. No feature-size temporaries. Two
// forms:
// * contrastive_loss_signs (what the Python layer runs when an anchor needs a gradient): the
//   forward also writes sign(a - p) and every sign(a - n_k) packed 2 bits per pair and element,
//   and the backward reads those (1 + K) / 4 bytes per element instead of a, p and every n_k:
//   a float32 step moves (2 + K) feature-size reads, the signs written and read back (together
//   (1 + K) / 8 of one) and the gradient, instead of 2 (2 + K) reads and the gradient; and the
//   features of the positives and negatives are not saved for the backward.
// * contrastive_loss / contrastive_distance: the backward re-reads a, p and every n_k (the
//   schema shared with the CUDA and Triton backends).
// Large outputs (gradients, signs) come from a bounded cache of huge-page blocks
// (fastdehaze/output_cache.h): on the VMs measured, the page faults of a fresh 32 MiB output
// cost more than the sweep that writes it, and a training step asks for the same sizes every
// time. (Streaming stores for the gradient were measured too: no gain for 6 negatives, slower
// for 1.)
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "fastdehaze/contrastive_math.h"
#include "fastdehaze/cpu_utils.h"
#include "fastdehaze/output_cache.h"

namespace fastdehaze {
namespace {

namespace cm = contrastive_math;

constexpr int64_t kChunk = 65536;  // elements per task (256 KiB runs of float32 per stream)
constexpr int64_t kGrab = 1;       // consecutive tasks a thread takes at a time
constexpr int64_t kSub = 4096;     // elements per L1-resident piece (more than kMaxGroup negatives)
constexpr int kMaxGroup = 8;      // negatives handled by one sweep

// ---- 64-byte vectors of the compute type (GCC/Clang vector extensions) ------------------------

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float v __attribute__((vector_size(64)));
  typedef int32_t m __attribute__((vector_size(64)));
  static constexpr int W = 16;
};
template <>
struct Vec<double> {
  typedef double v __attribute__((vector_size(64)));
  typedef int64_t m __attribute__((vector_size(64)));
  static constexpr int W = 8;
};

template <typename op_t>
using vec = typename Vec<op_t>::v;
template <typename op_t>
using mask = typename Vec<op_t>::m;

template <typename op_t>
inline vec<op_t> splat(op_t x) {
  vec<op_t> r;
  for (int j = 0; j < Vec<op_t>::W; ++j) r[j] = x;
  return r;
}

// W elements of storage type scalar_t at x as a vector of op_t (unaligned).
template <typename scalar_t, typename op_t>
inline vec<op_t> vload(const scalar_t* __restrict__ x) {
  vec<op_t> r;
  if constexpr (std::is_same_v<scalar_t, op_t>) {
    std::memcpy(&r, x, sizeof(r));
  } else {
    op_t t[Vec<op_t>::W];
    for (int j = 0; j < Vec<op_t>::W; ++j) t[j] = static_cast<op_t>(x[j]);
    std::memcpy(&r, t, sizeof(r));
  }
  return r;
}

template <typename scalar_t, typename op_t>
inline void vstore(scalar_t* __restrict__ out, vec<op_t> v) {
  if constexpr (std::is_same_v<scalar_t, op_t>) {
    std::memcpy(out, &v, sizeof(v));
  } else {
    for (int j = 0; j < Vec<op_t>::W; ++j) out[j] = static_cast<scalar_t>(v[j]);
  }
}

template <typename op_t>
inline vec<op_t> vabs(vec<op_t> x) {
  // clear the sign bit (NaN stays NaN)
  const mask<op_t> m = ~(mask<op_t>)splat<op_t>(op_t(-0.0));
  return (vec<op_t>)((mask<op_t>)x & m);
}

// (x > 0) - (x < 0): 1, -1, or 0 for 0 and NaN.
template <typename op_t>
inline vec<op_t> vsign(vec<op_t> x) {
  const mask<op_t> one = (mask<op_t>)splat<op_t>(op_t(1));
  const vec<op_t> zero = splat<op_t>(op_t(0));
  return (vec<op_t>)(one & (x > zero)) - (vec<op_t>)(one & (x < zero));
}

template <typename op_t>
inline op_t sign1(op_t x) {
  return static_cast<op_t>(x > op_t(0)) - static_cast<op_t>(x < op_t(0));
}

template <typename op_t>
inline op_t hsum(vec<op_t> v) {  // pairwise fold of the lanes
  op_t t[Vec<op_t>::W];
  std::memcpy(t, &v, sizeof(v));
  for (int h = Vec<op_t>::W / 2; h > 0; h >>= 1)
    for (int j = 0; j < h; ++j) t[j] += t[j + h];
  return t[0];
}

// ---- packed signs -------------------------------------------------------------------------------
//
// contrastive_loss_signs saves sign(a - p) and every sign(a - n_k) for its backward, 2 bits per
// pair and element, so that the backward reads (1 + K) / 4 bytes per element instead of a, p
// and every n_k again (and the positives' and negatives' features need not stay alive until
// the backward). Layout (int32 entries): layer l owns Qr planes (Qr = 1 + K, or 1 in ablation
// mode) of G_l = ceil(N_l / 16) entries each, from entry sum_{l' < l} Qr G_l'; plane 0 is the
// positive, plane 1 + k negative k. Element i of the layer (in the memory order the forward
// reads it: that of at::empty_like(anchor), which is also the gradient's) is bit i % 16
// ("a - x > 0") and bit 16 + i % 16 ("a - x < 0") of entry i / 16 of the plane; sign = pos - neg,
// 0 for 0 and for NaN (neither bit), as vsign gives. Bits past the end of a layer are 0.
constexpr int64_t kSignGroup = 16;  // elements per int32 entry

inline int64_t sign_entries(int64_t n) { return (n + kSignGroup - 1) / kSignGroup; }

// Masks (bit j: lane j) of the lanes of x that are > 0 and < 0 (NaN: neither).
template <typename op_t>
inline void sign_bits(vec<op_t> x, uint32_t& pos, uint32_t& neg) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<op_t, float>) {
    __m512 v;
    std::memcpy(&v, &x, sizeof(v));
    pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
  } else {
    __m512d v;
    std::memcpy(&v, &x, sizeof(v));
    pos = _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_GT_OQ);
    neg = _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_LT_OQ);
  }
#else
  const vec<op_t> zero = splat<op_t>(op_t(0));
  const mask<op_t> gt = x > zero, lt = x < zero;
  pos = neg = 0;
  for (int j = 0; j < Vec<op_t>::W; ++j) {
    pos |= static_cast<uint32_t>(gt[j] & 1) << j;
    neg |= static_cast<uint32_t>(lt[j] & 1) << j;
  }
#endif
}

// Stores the masks of the (up to W) elements from element i (a multiple of W) of a plane. The
// first store into an entry (i % 16 == 0) overwrites it, so unused bits end up 0.
inline void put_signs(uint32_t* plane, int64_t i, uint32_t pos, uint32_t neg) {
  const int s = static_cast<int>(i % kSignGroup);
  const uint32_t e = (pos << s) | (neg << (kSignGroup + s));
  if (s == 0)
    plane[i / kSignGroup] = e;
  else
    plane[i / kSignGroup] |= e;
}

// c * sign: sign lanes 1 (pos bit set), -1 (neg bit set) or 0 (neither). A product, not a
// select, so that a NaN or infinite coefficient (a NaN layer) gives NaN where sign is 0, as the
// backward that re-reads the features and torch's autograd give.
template <typename op_t>
inline vec<op_t> signed_coef(uint32_t pos, uint32_t neg, vec<op_t> c) {
  vec<op_t> sg;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<op_t, float>) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 x = _mm512_sub_ps(_mm512_maskz_mov_ps(static_cast<__mmask16>(pos), one),
                                   _mm512_maskz_mov_ps(static_cast<__mmask16>(neg), one));
    std::memcpy(&sg, &x, sizeof(sg));
  } else {
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d x = _mm512_sub_pd(_mm512_maskz_mov_pd(static_cast<__mmask8>(pos), one),
                                    _mm512_maskz_mov_pd(static_cast<__mmask8>(neg), one));
    std::memcpy(&sg, &x, sizeof(sg));
  }
#else
  for (int j = 0; j < Vec<op_t>::W; ++j)
    sg[j] = static_cast<op_t>((pos >> j) & 1) - static_cast<op_t>((neg >> j) & 1);
#endif
  return c * sg;
}

// ---- forward sweep ------------------------------------------------------------------------------

// Sub-streams per sweep: a task's elements are walked as kSplit(streams) interleaved runs, so
// that a thread with few streams (a, p and one negative) keeps more cache misses in flight.
// Measured on a 2-core EPYC, forward with packed signs of 1 negative against torch.compile's
// forward in the same process: 2 runs 0.92x its time, 1 run 0.99x, 4 runs 1.13x (too many
// streams once the sign planes are written too); 8 or more streams gain nothing from runs.
constexpr int kSplit(int streams) { return streams <= 3 ? 2 : 1; }

// One sweep over n elements: out[0] += sum |a - p| (when P), out[P + k] += sum |a - n_k|, k < KC.
// With S, the signs of a - p (when P) and of every a - n_k also go to planes P + k of sg (plane
// stride `plane` entries; sg points at the entry of the sweep's first element, a multiple of 16).
// The elements are summed in a fixed order (kSplit runs of h elements, then the rest).
template <typename scalar_t, typename op_t, int KC, bool P, bool S>
void fwd_sweep(const scalar_t* __restrict__ a, const scalar_t* __restrict__ p, const scalar_t* const* negs,
               int64_t n, double* out, uint32_t* __restrict__ sg, int64_t plane) {
  constexpr int W = Vec<op_t>::W;
  constexpr int R = kSplit(1 + P + KC);
  const scalar_t* __restrict__ nk[KC > 0 ? KC : 1];
  for (int k = 0; k < KC; ++k) nk[k] = negs[k];
  vec<op_t> ap[R], an[R][KC > 0 ? KC : 1];
  for (int r = 0; r < R; ++r) {
    ap[r] = splat<op_t>(op_t(0));
    for (int k = 0; k < KC; ++k) an[r][k] = splat<op_t>(op_t(0));
  }
  auto step = [&](int r, int64_t i) __attribute__((always_inline)) {
    const vec<op_t> av = vload<scalar_t, op_t>(a + i);
    if constexpr (P) {
      const vec<op_t> x = av - vload<scalar_t, op_t>(p + i);
      ap[r] += vabs<op_t>(x);
      if constexpr (S) {
        uint32_t bp, bn;
        sign_bits<op_t>(x, bp, bn);
        put_signs(sg, i, bp, bn);
      }
    }
    for (int k = 0; k < KC; ++k) {
      const vec<op_t> x = av - vload<scalar_t, op_t>(nk[k] + i);
      an[r][k] += vabs<op_t>(x);
      if constexpr (S) {
        uint32_t bp, bn;
        sign_bits<op_t>(x, bp, bn);
        put_signs(sg + (P + k) * plane, i, bp, bn);
      }
    }
  };
  const int64_t h = n / (R * kSignGroup) * kSignGroup;  // run length: a multiple of 16 (and of W)
  for (int64_t i = 0; i < h; i += W)
    for (int r = 0; r < R; ++r) step(r, r * h + i);
  int64_t i = R * h;
  for (; i + W <= n; i += W) step(0, i);
  op_t tp = 0, tn[KC > 0 ? KC : 1] = {};
  uint32_t bits[2 * (KC + 1)] = {};  // the tail's pos / neg masks per plane
  const int64_t tail = i;
  for (; i < n; ++i) {
    const op_t av = static_cast<op_t>(a[i]);
    const int j = static_cast<int>(i - tail);
    if constexpr (P) {
      const op_t x = av - static_cast<op_t>(p[i]);
      tp += std::abs(x);
      bits[0] |= static_cast<uint32_t>(x > op_t(0)) << j;
      bits[1] |= static_cast<uint32_t>(x < op_t(0)) << j;
    }
    for (int k = 0; k < KC; ++k) {
      const op_t x = av - static_cast<op_t>(nk[k][i]);
      tn[k] += std::abs(x);
      bits[2 * (P + k)] |= static_cast<uint32_t>(x > op_t(0)) << j;
      bits[2 * (P + k) + 1] |= static_cast<uint32_t>(x < op_t(0)) << j;
    }
  }
  if constexpr (S) {
    if (tail < n)
      for (int q = 0; q < P + KC; ++q) put_signs(sg + q * plane, tail, bits[2 * q], bits[2 * q + 1]);
  }
  for (int r = 1; r < R; ++r) {
    ap[0] += ap[r];
    for (int k = 0; k < KC; ++k) an[0][k] += an[r][k];
  }
  if constexpr (P) out[0] += static_cast<double>(hsum<op_t>(ap[0]) + tp);
  for (int k = 0; k < KC; ++k) out[P + k] += static_cast<double>(hsum<op_t>(an[0][k]) + tn[k]);
}

template <typename scalar_t, typename op_t, bool P, bool S>
void fwd_group(int kc, const scalar_t* a, const scalar_t* p, const scalar_t* const* negs, int64_t n, double* out,
               uint32_t* sg, int64_t plane) {
#define FD_FWD(KC) return fwd_sweep<scalar_t, op_t, KC, P, S>(a, p, negs, n, out, sg, plane)
  switch (kc) {
    case 0: FD_FWD(0);
    case 1: FD_FWD(1);
    case 2: FD_FWD(2);
    case 3: FD_FWD(3);
    case 4: FD_FWD(4);
    case 5: FD_FWD(5);
    case 6: FD_FWD(6);
    case 7: FD_FWD(7);
    default: FD_FWD(8);
  }
#undef FD_FWD
}

// ---- backward sweep -----------------------------------------------------------------------------

// r = (FIRST ? cp sign(a - p) : buf) - sum_{k < KC} c_k sign(a - n_k); stored to out (LAST)
// or to buf.
template <typename scalar_t, typename op_t, int KC, bool FIRST, bool LAST>
void bwd_sweep(const scalar_t* __restrict__ a, const scalar_t* __restrict__ p, const scalar_t* const* negs,
               op_t cp, const op_t* c, int64_t n, op_t* __restrict__ buf, scalar_t* __restrict__ out) {
  constexpr int W = Vec<op_t>::W;
  const scalar_t* __restrict__ nk[KC > 0 ? KC : 1];
  op_t ck[KC > 0 ? KC : 1];
  vec<op_t> vk[KC > 0 ? KC : 1];
  for (int k = 0; k < KC; ++k) {
    nk[k] = negs[k];
    ck[k] = c[k];
    vk[k] = splat<op_t>(c[k]);
  }
  const vec<op_t> vp = splat<op_t>(cp);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vec<op_t> av = vload<scalar_t, op_t>(a + i);
    vec<op_t> r;
    if constexpr (FIRST) {
      r = vp * vsign<op_t>(av - vload<scalar_t, op_t>(p + i));
    } else {
      std::memcpy(&r, buf + i, sizeof(r));
    }
    for (int k = 0; k < KC; ++k) r -= vk[k] * vsign<op_t>(av - vload<scalar_t, op_t>(nk[k] + i));
    if constexpr (LAST) {
      vstore<scalar_t, op_t>(out + i, r);
    } else {
      std::memcpy(buf + i, &r, sizeof(r));
    }
  }
  for (; i < n; ++i) {
    const op_t av = static_cast<op_t>(a[i]);
    op_t r = FIRST ? cp * sign1<op_t>(av - static_cast<op_t>(p[i])) : buf[i];
    for (int k = 0; k < KC; ++k) r -= ck[k] * sign1<op_t>(av - static_cast<op_t>(nk[k][i]));
    if constexpr (LAST) {
      out[i] = static_cast<scalar_t>(r);
    } else {
      buf[i] = r;
    }
  }
}

template <typename scalar_t, typename op_t, bool FIRST, bool LAST>
void bwd_group(int kc, const scalar_t* a, const scalar_t* p, const scalar_t* const* negs, op_t cp, const op_t* c,
               int64_t n, op_t* buf, scalar_t* out) {
#define FD_BWD(KC) return bwd_sweep<scalar_t, op_t, KC, FIRST, LAST>(a, p, negs, cp, c, n, buf, out)
  switch (kc) {
    case 0: FD_BWD(0);
    case 1: FD_BWD(1);
    case 2: FD_BWD(2);
    case 3: FD_BWD(3);
    case 4: FD_BWD(4);
    case 5: FD_BWD(5);
    case 6: FD_BWD(6);
    case 7: FD_BWD(7);
    default: FD_BWD(8);
  }
#undef FD_BWD
}

// out = sum_{q < Q} c_q sign_q over n elements from the packed signs (planes of `plane` entries
// from sg, which points at the entry of the sweep's first element); QC = Q when > 0.
template <typename scalar_t, typename op_t, int QC>
void bwd_signs_sweep(const uint32_t* __restrict__ sg, int64_t plane, int64_t Q, const op_t* c, int64_t n,
                     scalar_t* __restrict__ out) {
  constexpr int W = Vec<op_t>::W;
  constexpr uint32_t lanes = (1u << W) - 1;
  constexpr int R = kSplit(QC > 0 ? QC + 1 : 16);
  const int64_t nq = QC > 0 ? QC : Q;
  vec<op_t> vc[QC > 0 ? QC : 1];
  for (int q = 0; q < QC; ++q) vc[q] = splat<op_t>(c[q]);
  auto step = [&](int64_t i) __attribute__((always_inline)) {
    const int s = static_cast<int>(i % kSignGroup);
    vec<op_t> r = splat<op_t>(op_t(0));
    for (int64_t q = 0; q < nq; ++q) {
      const uint32_t e = sg[q * plane + i / kSignGroup];
      r += signed_coef<op_t>((e >> s) & lanes, (e >> (kSignGroup + s)) & lanes,
                             QC > 0 ? vc[QC > 0 ? q : 0] : splat<op_t>(c[q]));
    }
    vstore<scalar_t, op_t>(out + i, r);
  };
  const int64_t h = n / (R * kSignGroup) * kSignGroup;
  for (int64_t i = 0; i < h; i += W)
    for (int r = 0; r < R; ++r) step(r * h + i);
  int64_t i = R * h;
  for (; i + W <= n; i += W) step(i);
  for (; i < n; ++i) {
    const int s = static_cast<int>(i % kSignGroup);
    op_t r = 0;
    for (int64_t q = 0; q < nq; ++q) {
      const uint32_t e = sg[q * plane + i / kSignGroup];
      r += c[q] * (static_cast<op_t>((e >> s) & 1) - static_cast<op_t>((e >> (kSignGroup + s)) & 1));
    }
    out[i] = static_cast<scalar_t>(r);
  }
}

template <typename scalar_t, typename op_t>
void bwd_signs_group(int64_t Q, const uint32_t* sg, int64_t plane, const op_t* c, int64_t n, scalar_t* out) {
#define FD_BWS(QC) return bwd_signs_sweep<scalar_t, op_t, QC>(sg, plane, Q, c, n, out)
  switch (Q) {
    case 1: FD_BWS(1);
    case 2: FD_BWS(2);
    case 3: FD_BWS(3);
    case 4: FD_BWS(4);
    case 5: FD_BWS(5);
    case 6: FD_BWS(6);
    case 7: FD_BWS(7);
    case 8: FD_BWS(8);
    case 9: FD_BWS(9);
    default: FD_BWS(0);
  }
#undef FD_BWS
}

// ---- layers and tasks ---------------------------------------------------------------------------

// x in the memory layout of ref (same sizes): x itself when its strides already agree.
at::Tensor conform(const at::Tensor& x, const at::Tensor& ref) {
  if (x.strides() == ref.strides() && x.is_non_overlapping_and_dense()) return x;
  auto y = at::empty_like(ref);
  y.copy_(x);
  return y;
}

struct Layers {
  std::vector<at::Tensor> a, p, n;  // n[l * K + k]; all dense, in the memory order of a[l]
  std::vector<int64_t> N, task0;    // elements of layer l; first task of layer l (task0[L] = total)
  int64_t L = 0, K = 0;
};

// Tasks split a layer at multiples of kChunk elements from the start of its storage; a float32
// output allocated by the CPU allocator is 64-byte aligned, so every task's output is too.
Layers prepare(const char* op, at::TensorList anchors, at::TensorList positives, at::TensorList negatives,
               const at::Tensor& w, bool ablation, const std::vector<at::Tensor>* layout) {
  Layers s;
  s.L = static_cast<int64_t>(anchors.size());
  TORCH_CHECK(s.L >= 1, "fastdehaze::", op, ": at least one layer is needed");
  TORCH_CHECK(static_cast<int64_t>(positives.size()) == s.L, "fastdehaze::", op, ": one positive per anchor");
  TORCH_CHECK(negatives.size() % s.L == 0, "fastdehaze::", op, ": negatives must hold K tensors per layer");
  s.K = static_cast<int64_t>(negatives.size()) / s.L;
  TORCH_CHECK(ablation || s.K >= 1, "fastdehaze::", op, ": at least one negative is needed");
  TORCH_CHECK(w.dim() == 1 && w.numel() == s.K, "fastdehaze::", op, ": negative_weights must be [K]");
  const auto dt = anchors[0].scalar_type();
  s.task0.push_back(0);
  for (int64_t l = 0; l < s.L; ++l) {
    const auto& a = anchors[l];
    check_cpu(a, "anchor");
    TORCH_CHECK(a.scalar_type() == dt && positives[l].scalar_type() == dt, "fastdehaze::", op,
                ": all features must share one dtype");
    TORCH_CHECK(positives[l].sizes() == a.sizes(), "fastdehaze::", op, ": positive must have the anchor's shape");
    // the anchor's own layout when dense, else that of at::empty_like(anchor): its gradient's
    const at::Tensor ref = layout ? (*layout)[l] : (a.is_non_overlapping_and_dense() ? a : at::empty_like(a));
    s.a.push_back(conform(a, ref));
    s.p.push_back(conform(positives[l], ref));
    for (int64_t k = 0; k < s.K; ++k) {
      const auto& n = negatives[l * s.K + k];
      TORCH_CHECK(n.sizes() == a.sizes() && n.scalar_type() == dt, "fastdehaze::", op,
                  ": each negative must have the anchor's shape and dtype");
      s.n.push_back(ablation ? n : conform(n, ref));
    }
    s.N.push_back(a.numel());
    s.task0.push_back(s.task0.back() + (a.numel() + kChunk - 1) / kChunk);
  }
  return s;
}

int64_t layer_of(const std::vector<int64_t>& task0, int64_t task) {
  return static_cast<int64_t>(std::upper_bound(task0.begin(), task0.end(), task) - task0.begin()) - 1;
}

// body(task) for every task in [0, ntask), threads taking runs of kGrab tasks from a counter;
// each run is walked upwards (prefetch-friendly). With `from_end` the runs are taken from the
// end of the task list first: the backward starts on the features the forward read last,
// which may still be in the last-level cache.
template <typename F>
void for_each_task(int64_t ntask, bool from_end, const F& body) {
  if (ntask <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t nthr = std::min<int64_t>(at::get_num_threads(), (ntask + kGrab - 1) / kGrab);
  at::parallel_for(0, std::max<int64_t>(nthr, 1), 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t g = next.fetch_add(kGrab, std::memory_order_relaxed);
      if (g >= ntask) break;
      const int64_t t0 = from_end ? std::max<int64_t>(0, ntask - g - kGrab) : g;
      const int64_t t1 = from_end ? ntask - g : std::min(ntask, g + kGrab);
      for (int64_t t = t0; t < t1; ++t) body(t);
    }
  });
}

// ---- ops ----------------------------------------------------------------------------------------

// (loss, dists, signs); signs (packed signs, see above) only with save_signs, else empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const char* op, at::TensorList anchors,
                                                            at::TensorList positives, at::TensorList negatives,
                                                            const at::Tensor& lw, const at::Tensor& w, double eps,
                                                            bool ablation, bool save_signs) {
  const Layers s = prepare(op, anchors, positives, negatives, w, ablation, nullptr);
  TORCH_CHECK(lw.dim() == 1 && lw.numel() == s.L, "fastdehaze::", op, ": layer_weights must be [L]");
  const int64_t Q = 1 + s.K;  // columns of the dists table
  const int64_t Kr = ablation ? 0 : s.K;
  const int64_t Qr = 1 + Kr;  // columns actually computed (and planes of signs per layer)
  auto loss = at::empty({}, w.options());
  auto dists = at::empty({s.L, Q}, w.options());
  std::vector<int64_t> sign0(s.L + 1, 0);  // first entry of layer l's planes
  for (int64_t l = 0; l < s.L; ++l) sign0[l + 1] = sign0[l] + Qr * sign_entries(s.N[l]);
  const int64_t nsign = save_signs ? sign0[s.L] : 0;
  auto signs = cached_empty_strided({nsign}, {1}, w.options().dtype(at::kInt));
  uint32_t* sgp = save_signs ? reinterpret_cast<uint32_t*>(signs.mutable_data_ptr<int32_t>()) : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a[0].scalar_type(), "contrastive_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    TORCH_CHECK(w.scalar_type() == c10::CppTypeToScalarType<op_t>::value && lw.scalar_type() == w.scalar_type(),
                "fastdehaze::", op, ": weights have the wrong compute dtype");
    const int64_t ntask = s.task0.back();
    std::vector<double> part(static_cast<size_t>(ntask * Qr), 0.0);
    for_each_task(ntask, false, [&](int64_t task) {
      const int64_t l = layer_of(s.task0, task);
      const int64_t i0 = (task - s.task0[l]) * kChunk, n = std::min(kChunk, s.N[l] - i0);
      const scalar_t* a = s.a[l].const_data_ptr<scalar_t>() + i0;
      const scalar_t* p = s.p[l].const_data_ptr<scalar_t>() + i0;
      const scalar_t* negs[kMaxGroup];
      double* out = part.data() + task * Qr;
      const int64_t plane = sign_entries(s.N[l]);
      uint32_t* sg = sgp ? sgp + sign0[l] + i0 / kSignGroup : nullptr;  // kChunk is a multiple of 16
      for (int64_t k0 = 0; k0 == 0 || k0 < Kr; k0 += kMaxGroup) {
        const int kc = static_cast<int>(std::min<int64_t>(kMaxGroup, Kr - k0));
        for (int k = 0; k < kc; ++k) negs[k] = s.n[l * s.K + k0 + k].const_data_ptr<scalar_t>() + i0;
        if (k0 == 0) {
          if (sg)
            fwd_group<scalar_t, op_t, true, true>(kc, a, p, negs, n, out, sg, plane);
          else
            fwd_group<scalar_t, op_t, true, false>(kc, a, p, negs, n, out, nullptr, 0);
        } else {
          if (sg)
            fwd_group<scalar_t, op_t, false, true>(kc, a, p, negs, n, out + 1 + k0, sg + (1 + k0) * plane, plane);
          else
            fwd_group<scalar_t, op_t, false, false>(kc, a, p, negs, n, out + 1 + k0, nullptr, 0);
        }
      }
    });
    op_t* dp = dists.mutable_data_ptr<op_t>();
    const op_t* wp = w.const_data_ptr<op_t>();
    const op_t* lwp = lw.const_data_ptr<op_t>();
    double total = 0.0;
    for (int64_t l = 0; l < s.L; ++l) {
      for (int64_t q = 0; q < Q; ++q) {
        double acc = 0.0;
        if (q < Qr)
          for (int64_t t = s.task0[l]; t < s.task0[l + 1]; ++t) acc += part[t * Qr + q];
        dp[l * Q + q] = static_cast<op_t>(s.N[l] > 0 ? acc / static_cast<double>(s.N[l])
                                                     : std::numeric_limits<double>::quiet_NaN());
      }
      total += static_cast<double>(
          cm::layer_term<op_t>(dp + l * Q, wp, s.K, static_cast<op_t>(eps), lwp[l], ablation));
    }
    *loss.mutable_data_ptr<op_t>() = static_cast<op_t>(total);
  });
  return {loss, dists, signs};
}

// Per-layer backward coefficients c[l * Qr + q]: plane q's factor (cp for the positive, -cn w_k
// for negative k), so that dL/da = sum_q c_q sign_q.
template <typename op_t>
std::vector<op_t> grad_table(const at::Tensor& grad, const at::Tensor& lw, const at::Tensor& w,
                             const at::Tensor& dists, double eps, bool ablation, const std::vector<int64_t>& N,
                             int64_t K) {
  const int64_t L = static_cast<int64_t>(N.size()), Q = 1 + K, Kr = ablation ? 0 : K, Qr = 1 + Kr;
  auto dc = dists.to(w.scalar_type()).contiguous();
  const op_t* dp = dc.const_data_ptr<op_t>();
  const op_t* wp = w.const_data_ptr<op_t>();
  const op_t* lwp = lw.const_data_ptr<op_t>();
  const op_t g = grad.to(w.scalar_type()).item<op_t>();
  std::vector<op_t> c(static_cast<size_t>(L * Qr));
  for (int64_t l = 0; l < L; ++l) {
    op_t cp, cn;
    cm::grad_coefs<op_t>(dp + l * Q, wp, K, static_cast<op_t>(eps), lwp[l], ablation, g, static_cast<op_t>(N[l]),
                         cp, cn);
    c[l * Qr] = cp;
    for (int64_t k = 0; k < Kr; ++k) c[l * Qr + 1 + k] = -(cn * wp[k]);
  }
  return c;
}

std::vector<at::Tensor> backward_impl(const char* op, const at::Tensor& grad, at::TensorList anchors,
                                      at::TensorList positives, at::TensorList negatives, const at::Tensor& lw,
                                      const at::Tensor& w, const at::Tensor& dists, double eps, bool ablation) {
  std::vector<at::Tensor> grads;
  for (const auto& a : anchors) grads.push_back(cached_empty_like(a));
  const Layers s = prepare(op, anchors, positives, negatives, w, ablation, &grads);
  const int64_t Q = 1 + s.K;
  TORCH_CHECK(dists.dim() == 2 && dists.size(0) == s.L && dists.size(1) == Q, "fastdehaze::", op,
              ": dists must be [L, 1 + K]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a[0].scalar_type(), "contrastive_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const int64_t Kr = ablation ? 0 : s.K, Qr = 1 + Kr;
    const std::vector<op_t> coef = grad_table<op_t>(grad, lw, w, dists, eps, ablation, s.N, s.K);
    for_each_task(s.task0.back(), true, [&](int64_t task) {
      const int64_t l = layer_of(s.task0, task);
      const int64_t i0 = (task - s.task0[l]) * kChunk, n = std::min(kChunk, s.N[l] - i0);
      const scalar_t* a = s.a[l].const_data_ptr<scalar_t>() + i0;
      const scalar_t* p = s.p[l].const_data_ptr<scalar_t>() + i0;
      scalar_t* out = grads[l].mutable_data_ptr<scalar_t>() + i0;
      const op_t cp = coef[l * Qr];
      // the sweeps subtract c_k sign(a - n_k): c_k = -coef (exact)
      op_t c[kMaxGroup];
      const scalar_t* negs[kMaxGroup];
      if (Kr <= kMaxGroup) {  // the usual case: one sweep
        for (int64_t k = 0; k < Kr; ++k) {
          negs[k] = s.n[l * s.K + k].const_data_ptr<scalar_t>() + i0;
          c[k] = -coef[l * Qr + 1 + k];
        }
        bwd_group<scalar_t, op_t, true, true>(static_cast<int>(Kr), a, p, negs, cp, c, n, nullptr, out);
        return;
      }
      alignas(64) op_t buf[kSub];  // more than kMaxGroup negatives: partial results in L1
      for (int64_t j0 = 0; j0 < n; j0 += kSub) {
        const int64_t m = std::min(kSub, n - j0);
        for (int64_t k0 = 0; k0 < Kr; k0 += kMaxGroup) {
          const int kc = static_cast<int>(std::min<int64_t>(kMaxGroup, Kr - k0));
          for (int k = 0; k < kc; ++k) {
            negs[k] = s.n[l * s.K + k0 + k].const_data_ptr<scalar_t>() + i0 + j0;
            c[k] = -coef[l * Qr + 1 + k0 + k];
          }
          if (k0 == 0)
            bwd_group<scalar_t, op_t, true, false>(kc, a + j0, p + j0, negs, cp, c, m, buf, out + j0);
          else if (k0 + kMaxGroup < Kr)
            bwd_group<scalar_t, op_t, false, false>(kc, a + j0, p + j0, negs, cp, c, m, buf, out + j0);
          else
            bwd_group<scalar_t, op_t, false, true>(kc, a + j0, p + j0, negs, cp, c, m, buf, out + j0);
        }
      }
    });
  });
  return grads;
}

// The backward of contrastive_loss_signs: grads of the anchors from the packed signs alone.
std::vector<at::Tensor> signs_backward_impl(const char* op, const at::Tensor& grad, at::TensorList anchors,
                                            const at::Tensor& lw, const at::Tensor& w, const at::Tensor& dists,
                                            const at::Tensor& signs, double eps, bool ablation) {
  const int64_t L = static_cast<int64_t>(anchors.size());
  TORCH_CHECK(L >= 1, "fastdehaze::", op, ": at least one layer is needed");
  TORCH_CHECK(dists.dim() == 2 && dists.size(0) == L && dists.size(1) >= 1, "fastdehaze::", op,
              ": dists must be [L, 1 + K]");
  const int64_t K = dists.size(1) - 1, Qr = ablation ? 1 : 1 + K;
  TORCH_CHECK(w.dim() == 1 && w.numel() == K, "fastdehaze::", op, ": negative_weights must be [K]");
  TORCH_CHECK(lw.dim() == 1 && lw.numel() == L, "fastdehaze::", op, ": layer_weights must be [L]");
  const auto dt = anchors[0].scalar_type();
  std::vector<at::Tensor> grads;
  std::vector<int64_t> N, task0{0}, sign0{0};
  for (const auto& a : anchors) {
    check_cpu(a, "anchor");
    TORCH_CHECK(a.scalar_type() == dt, "fastdehaze::", op, ": all features must share one dtype");
    grads.push_back(cached_empty_like(a));  // dense, in the memory order the forward read the anchor in
    N.push_back(a.numel());
    task0.push_back(task0.back() + (a.numel() + kChunk - 1) / kChunk);
    sign0.push_back(sign0.back() + Qr * sign_entries(a.numel()));
  }
  TORCH_CHECK(signs.device().is_cpu() && signs.scalar_type() == at::kInt && signs.dim() == 1 &&
                  signs.numel() == sign0.back() && signs.is_contiguous(),
              "fastdehaze::", op, ": signs must be the int32 [", sign0.back(),
              "] packed signs of contrastive_loss_signs for these anchors");
  const uint32_t* sgp = reinterpret_cast<const uint32_t*>(signs.const_data_ptr<int32_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "contrastive_signs_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    TORCH_CHECK(w.scalar_type() == c10::CppTypeToScalarType<op_t>::value && lw.scalar_type() == w.scalar_type(),
                "fastdehaze::", op, ": weights have the wrong compute dtype");
    const std::vector<op_t> coef = grad_table<op_t>(grad, lw, w, dists, eps, ablation, N, K);
    for_each_task(task0.back(), true, [&](int64_t task) {
      const int64_t l = layer_of(task0, task);
      const int64_t i0 = (task - task0[l]) * kChunk, n = std::min(kChunk, N[l] - i0);
      bwd_signs_group<scalar_t, op_t>(Qr, sgp + sign0[l] + i0 / kSignGroup, sign_entries(N[l]),
                                      coef.data() + l * Qr, n, grads[l].mutable_data_ptr<scalar_t>() + i0);
    });
  });
  return grads;
}

std::tuple<at::Tensor, at::Tensor> contrastive_distance_cpu(const at::Tensor& anchor, const at::Tensor& positive,
                                                            at::TensorList negatives, const at::Tensor& w,
                                                            double eps, bool ablation) {
  auto lw = at::ones({1}, w.options());
  auto r = forward_impl("contrastive_distance", {anchor}, {positive}, negatives, lw, w, eps, ablation, false);
  return {std::get<0>(r), std::get<1>(r)};
}

at::Tensor contrastive_distance_backward_cpu(const at::Tensor& grad, const at::Tensor& anchor,
                                             const at::Tensor& positive, at::TensorList negatives, const at::Tensor& w,
                                             const at::Tensor& dists, double eps, bool ablation) {
  auto lw = at::ones({1}, w.options());
  return backward_impl("contrastive_distance_backward", grad, {anchor}, {positive}, negatives, lw, w, dists, eps,
                       ablation)[0];
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_cpu(at::TensorList anchors, at::TensorList positives,
                                                        at::TensorList negatives, const at::Tensor& lw,
                                                        const at::Tensor& w, double eps, bool ablation) {
  auto r = forward_impl("contrastive_loss", anchors, positives, negatives, lw, w, eps, ablation, false);
  return {std::get<0>(r), std::get<1>(r)};
}

std::vector<at::Tensor> contrastive_loss_backward_cpu(const at::Tensor& grad, at::TensorList anchors,
                                                      at::TensorList positives, at::TensorList negatives,
                                                      const at::Tensor& lw, const at::Tensor& w,
                                                      const at::Tensor& dists, double eps, bool ablation) {
  return backward_impl("contrastive_loss_backward", grad, anchors, positives, negatives, lw, w, dists, eps, ablation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss_signs_cpu(at::TensorList anchors,
                                                                          at::TensorList positives,
                                                                          at::TensorList negatives,
                                                                          const at::Tensor& lw, const at::Tensor& w,
                                                                          double eps, bool ablation) {
  return forward_impl("contrastive_loss_signs", anchors, positives, negatives, lw, w, eps, ablation, true);
}

std::vector<at::Tensor> contrastive_loss_signs_backward_cpu(const at::Tensor& grad, at::TensorList anchors,
                                                            const at::Tensor& lw, const at::Tensor& w,
                                                            const at::Tensor& dists, const at::Tensor& signs,
                                                            double eps, bool ablation) {
  return signs_backward_impl("contrastive_loss_signs_backward", grad, anchors, lw, w, dists, signs, eps, ablation);
}

}  // namespace

// Frees the blocks the contrastive kernels keep for their large outputs (output_cache.h);
// returns the bytes freed. No tensor arguments, so one kernel for every device.
TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  m.def("contrastive_release_cache() -> int", [] { return release_output_cache(); });
}

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("contrastive_distance", &contrastive_distance_cpu);
  m.impl("contrastive_distance_backward", &contrastive_distance_backward_cpu);
  m.impl("contrastive_loss", &contrastive_loss_cpu);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward_cpu);
  m.impl("contrastive_loss_signs", &contrastive_loss_signs_cpu);
  m.impl("contrastive_loss_signs_backward", &contrastive_loss_signs_backward_cpu);
}

}  // namespace fastdehaze
