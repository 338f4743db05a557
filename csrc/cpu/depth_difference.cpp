// C++ CPU kernels of the depth-difference ops (DCMPNet "difference perception", SPEC section 5).
//
// Layout: every tensor is taken contiguous NCHW. Two kinds of task, both run by at::parallel_for:
// * softmax statistics: (image, chunk of kChunk of its C*H*W values). A chunk is converted to
//   the compute type into a cache-resident buffer, its maximum taken, then the sum of exp(x - max)
//   (the buffer is read twice from cache; memory once). The per-chunk pairs (max, sum) are the
//   second level: merged per image as in an online softmax into lse = max + log(sum).
// * per pixel: (image, block of kCpuPixelBlock pixels), looping over the channels to form
//   S = sum_c P_c = sum_c exp(diff_c - lse) and then W, the loss terms or the gradients.
// Loops run over 16 independent lanes (and exp is the polynomial of depth_difference_math.h) so
// that g++ vectorises them; partial sums of a task are summed in double across tasks, serially
// in task order (deterministic for a given thread count-independent task split).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "fastdehaze/cpu_utils.h"
#include "fastdehaze/depth_difference_math.h"

namespace fastdehaze {
namespace {

namespace dm = depth_difference_math;

constexpr int64_t kLanes = 16;
constexpr int64_t kChunk = 16384;  // softmax statistics: values per task

// lse[b] = log sum_i exp(x_i) over the N values of image b, x = a - c (or x = a if c is null).
template <typename scalar_t>
void softmax_lse(const scalar_t* a, const scalar_t* c, int64_t B, int64_t N, opmath_t<scalar_t>* lse) {
  using op_t = opmath_t<scalar_t>;
  const op_t ninf = dm::neg_inf<op_t>();
  const int64_t nchunk = std::max<int64_t>(1, (N + kChunk - 1) / kChunk);
  std::vector<op_t> pm(B * nchunk), ps(B * nchunk);
  at::parallel_for(0, B * nchunk, 1, [&](int64_t begin, int64_t end) {
    std::vector<op_t> buf(kChunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / nchunk, i0 = (task % nchunk) * kChunk;
      const int64_t n = std::max<int64_t>(0, std::min(kChunk, N - i0));
      const scalar_t* ap = a + bi * N + i0;
      op_t* x = buf.data();
      if (c) {
        const scalar_t* cp = c + bi * N + i0;
        for (int64_t i = 0; i < n; ++i) x[i] = static_cast<op_t>(ap[i]) - static_cast<op_t>(cp[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) x[i] = static_cast<op_t>(ap[i]);
      }
      op_t mv[kLanes];
      std::fill(mv, mv + kLanes, ninf);
      int64_t i = 0;
      for (; i + kLanes <= n; i += kLanes)
        for (int64_t j = 0; j < kLanes; ++j) mv[j] = nan_max(mv[j], x[i + j]);
      op_t m = ninf;
      for (int64_t j = 0; j < kLanes; ++j) m = nan_max(m, mv[j]);
      for (; i < n; ++i) m = nan_max(m, x[i]);
      op_t s;
      if (m != m) {
        s = m;  // NaN: the whole image's softmax is NaN
      } else if (m == ninf) {
        s = op_t(0);  // only -inf values: they add exp(-inf - M) = 0 to any finite maximum M
      } else {
        op_t sv[kLanes] = {};
        i = 0;
        for (; i + kLanes <= n; i += kLanes)
          for (int64_t j = 0; j < kLanes; ++j) sv[j] += dm::dd_exp(x[i + j] - m);
        s = op_t(0);
        for (int64_t j = 0; j < kLanes; ++j) s += sv[j];
        for (; i < n; ++i) s += dm::dd_exp(x[i] - m);
      }
      pm[task] = m;
      ps[task] = s;
    }
  });
  for (int64_t bi = 0; bi < B; ++bi) {
    op_t m = ninf, s = op_t(0);
    for (int64_t k = 0; k < nchunk; ++k) dm::merge(m, s, pm[bi * nchunk + k], ps[bi * nchunk + k]);
    lse[bi] = dm::finalize_lse(m, s);
  }
}

// P[c * n + p] = exp(a - c - lse) for the n pixels at p0 of image bi (P may be null), S[p] = sum_c.
template <typename scalar_t>
inline void softmax_block(const scalar_t* a, const scalar_t* cl, int64_t bi, int64_t C, int64_t HW, int64_t p0,
                          int64_t n, opmath_t<scalar_t> L, opmath_t<scalar_t>* P, opmath_t<scalar_t>* S) {
  using op_t = opmath_t<scalar_t>;
  std::fill(S, S + n, op_t(0));
  for (int64_t ch = 0; ch < C; ++ch) {
    const scalar_t* ar = a + (bi * C + ch) * HW + p0;
    const scalar_t* cr = cl ? cl + (bi * C + ch) * HW + p0 : nullptr;
    op_t* Pr = P ? P + ch * n : nullptr;
    for (int64_t p = 0; p < n; ++p) {
      const op_t x = cr ? static_cast<op_t>(ar[p]) - static_cast<op_t>(cr[p]) : static_cast<op_t>(ar[p]);
      const op_t e = dm::dd_exp(x - L);
      if (Pr) Pr[p] = e;
      S[p] += e;
    }
  }
}

void check_image(const at::Tensor& x, const char* op, const char* name) {
  check_cpu(x, name);
  TORCH_CHECK(x.dim() == 4, "fastdehaze::", op, ": ", name, " must be [B,C,H,W], got ", x.sizes());
}

// ---- difference_perception_weight ----------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> dpw_cpu(const at::Tensor& diff, double eps, bool normalize) {
  check_image(diff, "difference_perception_weight", "diff");
  auto d = diff.contiguous();
  const int64_t B = d.size(0), C = d.size(1), H = d.size(2), Wd = d.size(3), HW = H * Wd;
  const auto cdt = d.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto W = at::empty({B, 1, H, Wd}, d.options());
  auto lse = at::empty({B}, d.options().dtype(cdt));
  if (B == 0) return {W, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "difference_perception_weight_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    op_t* lp = lse.mutable_data_ptr<op_t>();
    softmax_lse<scalar_t>(dp, nullptr, B, C * HW, lp);
    scalar_t* Wp = W.mutable_data_ptr<scalar_t>();
    const op_t scale = normalize ? static_cast<op_t>(HW) : op_t(1);
    const op_t ceps = normalize ? op_t(0) : static_cast<op_t>(C) * static_cast<op_t>(eps);
    const int64_t nblk = (HW + kCpuPixelBlock - 1) / kCpuPixelBlock;
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      op_t S[kCpuPixelBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / nblk, p0 = (task % nblk) * kCpuPixelBlock;
        const int64_t n = std::min(kCpuPixelBlock, HW - p0);
        softmax_block<scalar_t>(dp, nullptr, bi, C, HW, p0, n, lp[bi], nullptr, S);
        scalar_t* Wr = Wp + bi * HW + p0;
        for (int64_t p = 0; p < n; ++p) Wr[p] = static_cast<scalar_t>(scale * S[p] + ceps);
      }
    });
  });
  return {W, lse};
}

at::Tensor dpw_backward_cpu(const at::Tensor& grad, const at::Tensor& diff, const at::Tensor& lse, bool normalize) {
  check_image(diff, "difference_perception_weight_backward", "diff");
  auto d = diff.contiguous();
  const int64_t B = d.size(0), C = d.size(1), HW = d.size(2) * d.size(3);
  TORCH_CHECK(grad.numel() == B * HW, "fastdehaze::difference_perception_weight_backward: grad must be [B,1,H,W]");
  TORCH_CHECK(lse.numel() == B, "fastdehaze::difference_perception_weight_backward: lse must be [B]");
  auto gd = at::empty_like(d, at::MemoryFormat::Contiguous);
  if (gd.numel() == 0) return gd;
  auto g = grad.to(d.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "difference_perception_weight_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    TORCH_CHECK(lse.scalar_type() == c10::CppTypeToScalarType<op_t>::value, "fastdehaze: lse has the wrong dtype");
    auto lc = lse.contiguous();
    const op_t* lp = lc.const_data_ptr<op_t>();
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = gd.mutable_data_ptr<scalar_t>();
    const op_t scale = normalize ? static_cast<op_t>(HW) : op_t(1);
    const int64_t nblk = (HW + kCpuPixelBlock - 1) / kCpuPixelBlock;
    // Pass A: dot[b] = sum_p scale g_p S_p (= sum_j P_j dL/dP_j).
    std::vector<double> part(B * nblk);
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      op_t S[kCpuPixelBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / nblk, p0 = (task % nblk) * kCpuPixelBlock;
        const int64_t n = std::min(kCpuPixelBlock, HW - p0);
        softmax_block<scalar_t>(dp, nullptr, bi, C, HW, p0, n, lp[bi], nullptr, S);
        const scalar_t* gr = gp + bi * HW + p0;
        op_t acc[kLanes] = {};
        int64_t p = 0;
        for (; p + kLanes <= n; p += kLanes)
          for (int64_t j = 0; j < kLanes; ++j) acc[j] += static_cast<op_t>(gr[p + j]) * S[p + j];
        double s = 0;
        for (int64_t j = 0; j < kLanes; ++j) s += acc[j];
        for (; p < n; ++p) s += static_cast<double>(static_cast<op_t>(gr[p]) * S[p]);
        part[task] = s * static_cast<double>(scale);
      }
    });
    std::vector<op_t> dot(B);
    for (int64_t bi = 0; bi < B; ++bi) {
      double s = 0;
      for (int64_t k = 0; k < nblk; ++k) s += part[bi * nblk + k];
      dot[bi] = static_cast<op_t>(s);
    }
    // Pass B: grad_c,p = P_c,p (scale g_p - dot_b).
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      op_t coef[kCpuPixelBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / nblk, p0 = (task % nblk) * kCpuPixelBlock;
        const int64_t n = std::min(kCpuPixelBlock, HW - p0);
        const scalar_t* gr = gp + bi * HW + p0;
        for (int64_t p = 0; p < n; ++p) coef[p] = scale * static_cast<op_t>(gr[p]) - dot[bi];
        const op_t L = lp[bi];
        for (int64_t ch = 0; ch < C; ++ch) {
          const int64_t off = (bi * C + ch) * HW + p0;
          for (int64_t p = 0; p < n; ++p)
            op[off + p] = static_cast<scalar_t>(dm::dd_exp(static_cast<op_t>(dp[off + p]) - L) * coef[p]);
        }
      }
    });
  });
  return gd;
}

// ---- depth_difference_loss -----------------------------------------------------------------

struct LossDims {
  int64_t B, C, H, W, HW;
};

LossDims loss_dims(const at::Tensor& dh, const at::Tensor& cl, const at::Tensor& Dp, const at::Tensor& Dt) {
  const char* op = "depth_difference_loss";
  check_image(dh, op, "dehazed");
  check_image(cl, op, "clear");
  check_image(Dp, op, "depth_pred");
  check_image(Dt, op, "depth_target");
  TORCH_CHECK(cl.sizes() == dh.sizes(), "fastdehaze::depth_difference_loss: clear must match dehazed");
  TORCH_CHECK(Dp.size(0) == dh.size(0) && Dp.size(1) == 1 && Dp.size(2) == dh.size(2) && Dp.size(3) == dh.size(3),
              "fastdehaze::depth_difference_loss: depth_pred must be [B,1,H,W] matching dehazed");
  TORCH_CHECK(Dt.sizes() == Dp.sizes(), "fastdehaze::depth_difference_loss: depth_target must match depth_pred");
  const auto st = dh.scalar_type();
  TORCH_CHECK(cl.scalar_type() == st && Dp.scalar_type() == st && Dt.scalar_type() == st,
              "fastdehaze::depth_difference_loss: all inputs must have one dtype");
  return {dh.size(0), dh.size(1), dh.size(2), dh.size(3), dh.size(2) * dh.size(3)};
}

std::tuple<at::Tensor, at::Tensor> ddl_cpu(const at::Tensor& dehazed, const at::Tensor& clear,
                                           const at::Tensor& depth_pred, const at::Tensor& depth_target, double eps) {
  const LossDims d = loss_dims(dehazed, clear, depth_pred, depth_target);
  auto dh = dehazed.contiguous(), cl = clear.contiguous(), Dp = depth_pred.contiguous(), Dt = depth_target.contiguous();
  const auto cdt = dh.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto loss = at::empty({}, dh.options().dtype(cdt));
  auto stats = at::empty({d.B, 2}, dh.options().dtype(cdt));
  const int64_t N = d.B * d.HW;
  if (N == 0) {
    loss.fill_(std::numeric_limits<double>::quiet_NaN());  // the mean of nothing, as F.l1_loss
    stats.zero_();
    return {loss, stats};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dh.scalar_type(), "depth_difference_loss_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    const scalar_t* hp = dh.const_data_ptr<scalar_t>();
    const scalar_t* cp = cl.const_data_ptr<scalar_t>();
    const scalar_t* pp = Dp.const_data_ptr<scalar_t>();
    const scalar_t* tp = Dt.const_data_ptr<scalar_t>();
    std::vector<op_t> lse(d.B);
    softmax_lse<scalar_t>(hp, cp, d.B, d.C * d.HW, lse.data());
    const op_t ceps = static_cast<op_t>(d.C) * static_cast<op_t>(eps);
    const int64_t nblk = (d.HW + kCpuPixelBlock - 1) / kCpuPixelBlock;
    std::vector<double> part(d.B * nblk * 3);
    at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
      op_t S[kCpuPixelBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / nblk, p0 = (task % nblk) * kCpuPixelBlock;
        const int64_t n = std::min(kCpuPixelBlock, d.HW - p0);
        softmax_block<scalar_t>(hp, cp, bi, d.C, d.HW, p0, n, lse[bi], nullptr, S);
        const scalar_t* pr = pp + bi * d.HW + p0;
        const scalar_t* tr = tp + bi * d.HW + p0;
        op_t a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
        int64_t p = 0;
        for (; p + kLanes <= n; p += kLanes)
          for (int64_t j = 0; j < kLanes; ++j) {
            const op_t W = S[p + j] + ceps;
            const op_t e = static_cast<op_t>(pr[p + j]) - static_cast<op_t>(tr[p + j]);
            a1[j] += dm::abs_(W * e);
            a2[j] += dm::abs_(e);
            a3[j] += S[p + j] * dm::loss_dW(W, e);
          }
        for (; p < n; ++p) {
          const op_t W = S[p] + ceps;
          const op_t e = static_cast<op_t>(pr[p]) - static_cast<op_t>(tr[p]);
          a1[0] += dm::abs_(W * e);
          a2[0] += dm::abs_(e);
          a3[0] += S[p] * dm::loss_dW(W, e);
        }
        double s1 = 0, s2 = 0, s3 = 0;
        for (int64_t j = 0; j < kLanes; ++j) {
          s1 += a1[j];
          s2 += a2[j];
          s3 += a3[j];
        }
        part[task * 3 + 0] = s1;
        part[task * 3 + 1] = s2;
        part[task * 3 + 2] = s3;
      }
    });
    double t1 = 0, t2 = 0;
    op_t* sp = stats.mutable_data_ptr<op_t>();
    for (int64_t bi = 0; bi < d.B; ++bi) {
      double s3 = 0;
      for (int64_t k = 0; k < nblk; ++k) {
        const double* q = &part[(bi * nblk + k) * 3];
        t1 += q[0];
        t2 += q[1];
        s3 += q[2];
      }
      sp[bi * 2 + 0] = lse[bi];
      sp[bi * 2 + 1] = static_cast<op_t>(s3 / static_cast<double>(N));
    }
    loss.fill_((t1 + t2) / static_cast<double>(N));
  });
  return {loss, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ddl_backward_cpu(
    const at::Tensor& grad, const at::Tensor& dehazed, const at::Tensor& clear, const at::Tensor& depth_pred,
    const at::Tensor& depth_target, const at::Tensor& stats, double eps, bool needs_dehazed, bool needs_clear,
    bool needs_pred, bool needs_target) {
  const LossDims d = loss_dims(dehazed, clear, depth_pred, depth_target);
  auto dh = dehazed.contiguous(), cl = clear.contiguous(), Dp = depth_pred.contiguous(), Dt = depth_target.contiguous();
  auto mk = [](bool need, const at::Tensor& like) {
    return need ? at::empty_like(like, at::MemoryFormat::Contiguous) : at::empty({0}, like.options());
  };
  auto gh = mk(needs_dehazed, dh), gc = mk(needs_clear, cl), gp = mk(needs_pred, Dp), gt = mk(needs_target, Dt);
  const int64_t N = d.B * d.HW;
  if (N == 0 || !(needs_dehazed || needs_clear || needs_pred || needs_target)) return {gh, gc, gp, gt};
  TORCH_CHECK(stats.numel() == d.B * 2, "fastdehaze::depth_difference_loss_backward: stats must be [B,2]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dh.scalar_type(), "depth_difference_loss_backward_cpu", [&] {
    using op_t = opmath_t<scalar_t>;
    auto sc = stats.contiguous();
    TORCH_CHECK(sc.scalar_type() == c10::CppTypeToScalarType<op_t>::value, "fastdehaze: stats has the wrong dtype");
    const op_t* sp = sc.const_data_ptr<op_t>();
    const op_t g = grad.item().to<op_t>();
    const op_t inv = g / static_cast<op_t>(N);
    const scalar_t* hp = dh.const_data_ptr<scalar_t>();
    const scalar_t* cp = cl.const_data_ptr<scalar_t>();
    const scalar_t* pp = Dp.const_data_ptr<scalar_t>();
    const scalar_t* tp = Dt.const_data_ptr<scalar_t>();
    scalar_t* ghp = needs_dehazed ? gh.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gcp = needs_clear ? gc.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gpp = needs_pred ? gp.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gtp = needs_target ? gt.mutable_data_ptr<scalar_t>() : nullptr;
    const bool needs_img = needs_dehazed || needs_clear;
    const op_t ceps = static_cast<op_t>(d.C) * static_cast<op_t>(eps);
    const int64_t nblk = (d.HW + kCpuPixelBlock - 1) / kCpuPixelBlock;
    at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
      std::vector<op_t> P(needs_img ? d.C * kCpuPixelBlock : 0);
      op_t S[kCpuPixelBlock], coef[kCpuPixelBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / nblk, p0 = (task % nblk) * kCpuPixelBlock;
        const int64_t n = std::min(kCpuPixelBlock, d.HW - p0);
        const op_t L = sp[bi * 2], gdot = g * sp[bi * 2 + 1];
        softmax_block<scalar_t>(hp, cp, bi, d.C, d.HW, p0, n, L, needs_img ? P.data() : nullptr, S);
        const int64_t poff = bi * d.HW + p0;
        for (int64_t p = 0; p < n; ++p) {
          const op_t W = S[p] + ceps;
          const op_t e = static_cast<op_t>(pp[poff + p]) - static_cast<op_t>(tp[poff + p]);
          const op_t gD = inv * dm::loss_dDpred(W, e);
          if (gpp) gpp[poff + p] = static_cast<scalar_t>(gD);
          if (gtp) gtp[poff + p] = static_cast<scalar_t>(-gD);
          coef[p] = inv * dm::loss_dW(W, e) - gdot;
        }
        if (!needs_img) continue;
        for (int64_t ch = 0; ch < d.C; ++ch) {
          const int64_t off = (bi * d.C + ch) * d.HW + p0;
          const op_t* Pr = P.data() + ch * n;
          if (ghp)
            for (int64_t p = 0; p < n; ++p) ghp[off + p] = static_cast<scalar_t>(Pr[p] * coef[p]);
          if (gcp)
            for (int64_t p = 0; p < n; ++p) gcp[off + p] = static_cast<scalar_t>(-(Pr[p] * coef[p]));
        }
      }
    });
  });
  return {gh, gc, gp, gt};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdehaze, CPU, m) {
  m.impl("difference_perception_weight", &dpw_cpu);
  m.impl("difference_perception_weight_backward", &dpw_backward_cpu);
  m.impl("depth_difference_loss", &ddl_cpu);
  m.impl("depth_difference_loss_backward", &ddl_backward_cpu);
}

}  // namespace fastdehaze
