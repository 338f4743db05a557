// C++ CPU kernels of the IICL patch ops (SPEC section 3).
//
// patch_brightness_rank: tasks = (image, chunk of patch rows). A task reads each image row of
// its chunk once (all channels), folds the channels into a brightness row, reduces it to one
// sum per patch column and adds those into the patch sums of its patch rows. Everything is
// accumulated in double:
//  * stride >= patch (non-overlapping patches, the default), and patch <= 4 stride: direct
//    sums (each window of a row summed, then added to each of the at most ceil(patch / stride)
//    patch rows that hold the row, rows in order);
//  * patch > 4 stride: running sums (a row prefix sum, and per patch column a running sum over
//    rows snapshotted where a patch row starts and ends), O(1) per pixel whatever the overlap.
//  With overlap, chunks span a fixed number of patch rows (not a function of the thread
//  count), so the result does not depend on the number of threads.
// The sums become means in the score dtype (float64 for float64 x, else float32) and each image
// is ranked by a partial sort under patch_math::precedes, the strict total order of
// torch.sort(stable=True), so the selection equals the reference's.
//
// gather_patches: a row copy per (image, patch, channel, patch row), read through x's strides
// (no contiguous copy of a channels_last or sliced image). Its backward writes each (image,
// channel) plane once, row by row: rows no patch covers are zero-filled, a covered row is the sum
// of its patches' rows in ascending patch order (one task per plane: no races, deterministic;
// summed in float for half dtypes). Both run in the calling thread unless they write more than
// kGatherParallelBytes (see there).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastdehaze/cpu_utils.h"
#include "fastdehaze/patch_math.h"

namespace fastdehaze {
namespace {

namespace pm = patch_math;
using Tensor6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// A running sum that stays exact about non-finite values: the sum of the finite ones plus the
// counts of NaN, +inf and -inf.
struct RunSum {
  double s = 0.0;
  int64_t nan = 0, pinf = 0, ninf = 0;
  RunSum plus(double v) const {
    RunSum r = *this;
    if (std::isfinite(v)) r.s += v;
    else if (v != v) ++r.nan;
    else if (v > 0) ++r.pinf;
    else ++r.ninf;
    return r;
  }
  RunSum operator-(const RunSum& o) const { return {s - o.s, nan - o.nan, pinf - o.pinf, ninf - o.ninf}; }
  RunSum& operator+=(const RunSum& o) {
    s += o.s; nan += o.nan; pinf += o.pinf; ninf += o.ninf;
    return *this;
  }
  double finish() const {
    if (nan > 0 || (pinf > 0 && ninf > 0)) return std::numeric_limits<double>::quiet_NaN();
    if (pinf > 0) return std::numeric_limits<double>::infinity();
    if (ninf > 0) return -std::numeric_limits<double>::infinity();
    return s;
  }
};

// Patch sums [B, nH*nW] (double) of the brightness map of x (contiguous NCHW).
template <typename scalar_t, int measure>
void patch_sums(const scalar_t* x, double* sums, int64_t B, int64_t C, int64_t H, int64_t W, int64_t p, int64_t s,
                int64_t nH, int64_t nW) {
  using op_t = opmath_t<scalar_t>;
  // Overlapping patches (s < p): a row belongs to up to ceil(p / s) patch rows. With few of
  // them (p <= 4 s) each row's window sums are computed directly (p adds per window, IEEE NaN/inf
  // for free) and added to every patch row that holds the row; with many, running sums (O(1) per
  // window, exact about NaN/inf through RunSum).
  const bool overlap = s < p;
  const bool running = overlap && p > 4 * s;
  const int64_t used_w = (nW - 1) * s + p;  // columns that belong to some patch
  // Patch rows per task: one when patches do not overlap; otherwise enough that the rows read
  // twice at chunk borders (p - s of them) are a small fraction of the chunk.
  const int64_t chunk = overlap ? std::max<int64_t>(1, (4 * p + s - 1) / s) : 1;
  const int64_t nchunk = (nH + chunk - 1) / chunk;
  const int64_t HW = H * W;
  at::parallel_for(0, B * nchunk, 1, [&](int64_t begin, int64_t end) {
    std::vector<op_t> bright(used_w);
    std::vector<RunSum> pre(running ? used_w + 1 : 0), cum(running ? nW : 0), start;
    std::vector<double> rs(running ? 0 : nW);  // window sums of one row
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nchunk, i0 = (task % nchunk) * chunk, i1 = std::min(nH, i0 + chunk);
      double* S = sums + b * nH * nW;
      const int64_t y_begin = i0 * s, y_end = (i1 - 1) * s + p;
      if (running) {
        start.assign((i1 - i0) * nW, RunSum{});
        std::fill(cum.begin(), cum.end(), RunSum{});
      }
      for (int64_t i = i0; i < i1; ++i) std::fill(S + i * nW, S + (i + 1) * nW, 0.0);
      for (int64_t y = y_begin; y < y_end; ++y) {
        // Rows in the gaps between patch rows (stride > patch) are not read.
        if (!overlap && (y - y_begin) % s >= p) continue;
        // Brightness of the row, channel by channel (each channel row is contiguous).
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* row = x + (b * C + c) * HW + y * W;
          op_t* br = bright.data();
          if (c == 0) {
            for (int64_t xx = 0; xx < used_w; ++xx) br[xx] = pm::measure_step(op_t(0), static_cast<op_t>(row[xx]), 0, measure);
          } else {
            for (int64_t xx = 0; xx < used_w; ++xx) br[xx] = pm::measure_step(br[xx], static_cast<op_t>(row[xx]), c, measure);
          }
        }
        if (measure == pm::kMean)
          for (int64_t xx = 0; xx < used_w; ++xx) bright[xx] = pm::measure_finish(bright[xx], C, measure);
        if (!running) {
          for (int64_t j = 0; j < nW; ++j) {
            // Four interleaved double sums (fixed order): one chain of p dependent adds per window
            // bounded the whole op by add latency.
            const op_t* br = bright.data() + j * s;
            double a[4] = {0.0, 0.0, 0.0, 0.0};
            int64_t xx = 0;
            for (; xx + 4 <= p; xx += 4)
              for (int q = 0; q < 4; ++q) a[q] += static_cast<double>(br[xx + q]);
            for (; xx < p; ++xx) a[0] += static_cast<double>(br[xx]);
            rs[j] = (a[0] + a[1]) + (a[2] + a[3]);
          }
          // the patch rows i of this task that hold row y: i s <= y < i s + p (rows added in order)
          const int64_t lo = y - p + 1 <= 0 ? 0 : (y - p + 1 + s - 1) / s;
          const int64_t ilo = std::max(i0, lo), ihi = std::min(i1 - 1, y / s);
          for (int64_t i = ilo; i <= ihi; ++i) {
            double* Si = S + i * nW;
            for (int64_t j = 0; j < nW; ++j) Si[j] += rs[j];
          }
          continue;
        }
        // Running sums: finite values are summed, NaN/+inf/-inf only counted (a NaN or inf in a
        // prefix sum would poison every later difference); finish() rebuilds the IEEE result.
        pre[0] = RunSum{};
        for (int64_t xx = 0; xx < used_w; ++xx) pre[xx + 1] = pre[xx].plus(static_cast<double>(bright[xx]));
        for (int64_t j = 0; j < nW; ++j) cum[j] += pre[j * s + p] - pre[j * s];
        // After adding row y: a patch row i starting at y + 1 snapshots, one ending at y + 1 closes.
        const int64_t r = y + 1 - y_begin;
        if (r % s == 0 && i0 + r / s < i1)
          std::copy(cum.begin(), cum.end(), start.begin() + (r / s) * nW);
        if (r >= p && (r - p) % s == 0) {
          const int64_t i = i0 + (r - p) / s;
          if (i < i1)
            for (int64_t j = 0; j < nW; ++j) S[i * nW + j] = (cum[j] - start[(i - i0) * nW + j]).finish();
        }
      }
    }
  });
}

Tensor6 patch_brightness_rank_cpu(const at::Tensor& x, int64_t patch, int64_t stride, int64_t k, int64_t measure) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 4, "fastdehaze::patch_brightness_rank: x must be [B,C,H,W]");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(patch >= 1 && stride >= 1 && patch <= H && patch <= W,
              "fastdehaze::patch_brightness_rank: need 1 <= patch <= min(H, W) and stride >= 1");
  TORCH_CHECK(measure >= 0 && measure <= 3 && (measure != pm::kLuma || C == 3) && C >= 1,
              "fastdehaze::patch_brightness_rank: bad measure code (luma needs 3 channels)");
  const int64_t nH = (H - patch) / stride + 1, nW = (W - patch) / stride + 1, n = nH * nW;
  TORCH_CHECK(k >= 0 && k <= n, "fastdehaze::patch_brightness_rank: need 0 <= k <= nH*nW");
  const auto sdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto iopt = x.options().dtype(at::kLong);
  at::Tensor bi = at::empty({B, k}, iopt), bc = at::empty({B, k, 2}, iopt);
  at::Tensor di = at::empty({B, k}, iopt), dc = at::empty({B, k, 2}, iopt);
  at::Tensor bs = at::empty({B, k}, x.options().dtype(sdt)), ds = at::empty({B, k}, x.options().dtype(sdt));
  if (B == 0 || k == 0) return {bi, bs, bc, di, ds, dc};
  auto xc = x.contiguous();
  std::vector<double> sums(B * n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patch_brightness_rank_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    switch (measure) {  // the measure is a template argument: no branch in the pixel loops
      case pm::kLuma: patch_sums<scalar_t, pm::kLuma>(xp, sums.data(), B, C, H, W, patch, stride, nH, nW); break;
      case pm::kMean: patch_sums<scalar_t, pm::kMean>(xp, sums.data(), B, C, H, W, patch, stride, nH, nW); break;
      case pm::kDark: patch_sums<scalar_t, pm::kDark>(xp, sums.data(), B, C, H, W, patch, stride, nH, nW); break;
      default: patch_sums<scalar_t, pm::kMax>(xp, sums.data(), B, C, H, W, patch, stride, nH, nW); break;
    }
  });
  AT_DISPATCH_FLOATING_TYPES(bs.scalar_type(), "patch_brightness_rank_cpu_select", [&] {
    using sc_t = scalar_t;
    int64_t *bip = bi.mutable_data_ptr<int64_t>(), *dip = di.mutable_data_ptr<int64_t>();
    int64_t *bcp = bc.mutable_data_ptr<int64_t>(), *dcp = dc.mutable_data_ptr<int64_t>();
    sc_t *bsp = bs.mutable_data_ptr<sc_t>(), *dsp = ds.mutable_data_ptr<sc_t>();
    at::parallel_for(0, 2 * B, 1, [&](int64_t begin, int64_t end) {
      std::vector<sc_t> sc(n);
      std::vector<int64_t> idx(n);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / 2;
        const bool desc = task % 2 == 0;
        // The ranked values are the returned ones: the mean rounded to the score dtype.
        for (int64_t e = 0; e < n; ++e) sc[e] = static_cast<sc_t>(sums[b * n + e] / static_cast<double>(patch * patch));
        std::iota(idx.begin(), idx.end(), int64_t(0));
        std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t c) {
          return pm::precedes(sc[a], a, sc[c], c, desc);
        });
        int64_t* ip = (desc ? bip : dip) + b * k;
        int64_t* cp = (desc ? bcp : dcp) + b * k * 2;
        sc_t* sp = (desc ? bsp : dsp) + b * k;
        for (int64_t r = 0; r < k; ++r) {
          const int64_t e = idx[r];
          ip[r] = e;
          sp[r] = sc[e];
          cp[2 * r] = (e / nW) * stride;
          cp[2 * r + 1] = (e % nW) * stride;
        }
      }
    });
  });
  return {bi, bs, bc, di, ds, dc};
}

void check_corners(const at::Tensor& corners, int64_t B, const char* op) {
  TORCH_CHECK(corners.dim() == 3 && corners.size(0) == B && corners.size(2) == 2 && corners.scalar_type() == at::kLong,
              "fastdehaze::", op, ": corners must be an int64 [B,k,2] tensor");
}

// The gather ops are memory-bound copies and fills. One that writes fewer than
// kGatherParallelBytes runs in the calling thread: an OpenMP fork/join costs ~10 us on an idle
// machine but up to a scheduler tick (4-8 ms measured on the 2-core box) when another process
// holds the second core, and a second thread saves ~20 us of the 0.8 MB forward of the IICL
// default (8 patches of 32x32 x 3 channels x 8 images, float32). Larger ones (the backward's
// full-size gradient, 25 MB for [8,3,512,512] float32) run one task per thread of ATen's pool:
// the second thread saves 0.3-0.5 ms. Measured and not kept for those: a serial backward and a
// helper thread outside the OpenMP pool, both more robust alone under load but slower under
// load between other ATen ops (the pool's workers fall asleep, or compete with the helper).
constexpr int64_t kGatherParallelBytes = int64_t(4) << 20;

int64_t gather_grain(int64_t ntask, int64_t bytes) {
  return bytes < kGatherParallelBytes ? std::max<int64_t>(ntask, 1) : 1;
}

at::Tensor gather_patches_cpu(const at::Tensor& x, const at::Tensor& corners, int64_t patch) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 4, "fastdehaze::gather_patches: x must be [B,C,H,W]");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), p = patch;
  check_corners(corners, B, "gather_patches");
  TORCH_CHECK(p >= 1 && p <= H && p <= W, "fastdehaze::gather_patches: need 1 <= patch <= min(H, W)");
  const int64_t k = corners.size(1);
  auto out = at::empty({B, k, C, p, p}, x.options());
  if (out.numel() == 0) return out;
  auto cc = corners.contiguous();
  const int64_t* cp = cc.const_data_ptr<int64_t>();
  for (int64_t q = 0; q < B * k; ++q)
    TORCH_CHECK(cp[2 * q] >= 0 && cp[2 * q] <= H - p && cp[2 * q + 1] >= 0 && cp[2 * q + 1] <= W - p,
                "fastdehaze::gather_patches: corner out of range");
  // x is read through its strides (channels_last, slices): no contiguous copy of the image.
  const int64_t sB = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gather_patches_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t ntask = B * k * C;  // one (image, patch, channel) each
    at::parallel_for(0, ntask, gather_grain(ntask, out.numel() * out.element_size()), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c = t % C, bq = t / C, b = bq / k;
        const int64_t y0 = cp[2 * bq], x0 = cp[2 * bq + 1];
        const scalar_t* src = xp + b * sB + c * sC + y0 * sH + x0 * sW;
        scalar_t* dst = op + t * p * p;
        for (int64_t dy = 0; dy < p; ++dy, dst += p, src += sH) {
          if (sW == 1) std::memcpy(dst, src, p * sizeof(scalar_t));
          else for (int64_t dx = 0; dx < p; ++dx) dst[dx] = src[dx * sW];
        }
      }
    });
  });
  return out;
}

at::Tensor gather_patches_backward_cpu(const at::Tensor& grad, const at::Tensor& corners, int64_t H, int64_t W) {
  check_cpu(grad, "grad");
  TORCH_CHECK(grad.dim() == 5 && grad.size(3) == grad.size(4), "fastdehaze::gather_patches_backward: grad must be [B,k,C,p,p]");
  const int64_t B = grad.size(0), k = grad.size(1), C = grad.size(2), p = grad.size(3);
  check_corners(corners, B, "gather_patches_backward");
  TORCH_CHECK(corners.size(1) == k, "fastdehaze::gather_patches_backward: corners and grad disagree on k");
  auto gx = at::empty({B, C, H, W}, grad.options());
  if (gx.numel() == 0) return gx;
  auto gc = grad.contiguous();
  auto cc = corners.contiguous();
  const int64_t* cp = cc.const_data_ptr<int64_t>();
  for (int64_t q = 0; q < B * k; ++q)
    TORCH_CHECK(cp[2 * q] >= 0 && cp[2 * q] <= H - p && cp[2 * q + 1] >= 0 && cp[2 * q + 1] <= W - p,
                "fastdehaze::gather_patches_backward: corner out of range");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gather_patches_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const int64_t ntask = B * C;  // one (image, channel) plane each
    at::parallel_for(0, ntask, gather_grain(ntask, gx.numel() * gx.element_size()), [&](int64_t begin, int64_t end) {
      // Per image, the patches covering each row in ascending q (a CSR list: row y's patches are
      // rq[rs[y]] .. rq[rs[y + 1] - 1]), shared by the image's channels.
      constexpr bool kInPlace = std::is_same_v<scalar_t, op_t>;
      std::vector<int64_t> rs(H + 1), pos(H), rq(k * p);
      std::vector<op_t> acc(kInPlace ? 0 : W);
      int64_t cur_b = -1;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / C, c = t % C;
        const int64_t* cb = cp + 2 * b * k;
        if (b != cur_b) {
          cur_b = b;
          std::fill(rs.begin(), rs.end(), int64_t(0));
          for (int64_t q = 0; q < k; ++q)
            for (int64_t dy = 0; dy < p; ++dy) ++rs[cb[2 * q] + dy + 1];
          for (int64_t y = 0; y < H; ++y) rs[y + 1] += rs[y];
          std::copy(rs.begin(), rs.end() - 1, pos.begin());
          for (int64_t q = 0; q < k; ++q)
            for (int64_t dy = 0; dy < p; ++dy) rq[pos[cb[2 * q] + dy]++] = q;
        }
        scalar_t* plane = gxp + t * H * W;
        for (int64_t y = 0; y < H;) {
          if (rs[y] == rs[y + 1]) {  // a run of rows no patch covers: zeros, written once
            int64_t y1 = y + 1;
            while (y1 < H && rs[y1] == rs[y1 + 1]) ++y1;
            std::memset(plane + y * W, 0, (y1 - y) * W * sizeof(scalar_t));
            y = y1;
            continue;
          }
          // A covered row: zeros plus its patches' rows in q order, summed in place for float and
          // double, in an op_t row (L1) stored at the end for half dtypes.
          scalar_t* o = plane + y * W;
          op_t* a = kInPlace ? reinterpret_cast<op_t*>(o) : acc.data();
          std::fill(a, a + W, op_t(0));
          for (int64_t e = rs[y]; e < rs[y + 1]; ++e) {
            const int64_t q = rq[e], y0 = cb[2 * q], x0 = cb[2 * q + 1];
            const scalar_t* s = gp + (((b * k + q) * C + c) * p + (y - y0)) * p;
            op_t* d = a + x0;
            for (int64_t dx = 0; dx < p; ++dx) d[dx] += static_cast<op_t>(s[dx]);
          }
          if constexpr (!kInPlace)
            for (int64_t xx = 0; xx < W; ++xx) o[xx] = static_cast<scalar_t>(acc[xx]);
          ++y;
        }
      }
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("patch_brightness_rank", &patch_brightness_rank_cpu);
  m.impl("gather_patches", &gather_patches_cpu);
  m.impl("gather_patches_backward", &gather_patches_backward_cpu);
}

}  // namespace fastdehaze
