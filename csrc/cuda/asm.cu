// CUDA kernels of the atmospheric scattering model ops (SPEC section 1). One thread per pixel,
// looping over channels (a broadcast t is read once per pixel); launch plan grid::asm_pixels
// (fastdehaze/grid.h: logical blocks (b, pixel block) folded into grid.x, any B).
// Parameter gradients (gA, gbeta, gb) in two passes, without atomics (deterministic): each
// pixel block writes its block sum per (b, c) into a workspace [B*C, pixel blocks] (the `gA`
// etc. pointers of the backward kernels point there), then param_reduce_kernel sums each row
// in a fixed order.
// The per-element math is csrc/include/fastdehaze/asm_math.h, shared with the CPU kernels.
#include "asm.cuh"
#include "fastdehaze/asm_math.h"
#include "fastdehaze/grid.h"

namespace fastdehaze {
namespace {

namespace am = asm_math;

template <typename T>
__global__ void recover_kernel(grid::Plan pl, const T* __restrict__ I, const T* __restrict__ t, const opmath<T>* __restrict__ A,
                               const opmath<T>* __restrict__ t0, T* __restrict__ J, int64_t C, int64_t HW, int64_t Ct,
                               opmath<T> lo, opmath<T> hi, bool clamp) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    op_t tv = load(t + b * Ct * HW + p);
    for (int64_t c = 0; c < C; ++c) {
      if (Ct != 1 && c > 0) tv = load(t + (b * Ct + c) * HW + p);
      const op_t inv = op_t(1) / am::clamp_t(tv, t0[b * C + c]);
      const int64_t off = (b * C + c) * HW + p;
      op_t v = am::recover(load(I + off), inv, A[b * C + c]);
      if (clamp) v = am::clamp_out(v, lo, hi);
      store(J + off, v);
    }
  }
}

template <typename T>
__global__ void recover_backward_kernel(grid::Plan pl, const T* __restrict__ grad, const T* __restrict__ I, const T* __restrict__ t,
                                        const opmath<T>* __restrict__ A, const opmath<T>* __restrict__ t0,
                                        T* __restrict__ gI, T* __restrict__ gt, opmath<T>* __restrict__ gA, int64_t C,
                                        int64_t HW, int64_t Ct, opmath<T> lo, opmath<T> hi, bool clamp) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    const bool active = p < HW;
    op_t acc_t = 0;
    for (int64_t c = 0; c < C; ++c) {
      op_t sA = 0;
      if (active) {
        const op_t tv = load(t + (b * Ct + (Ct == 1 ? 0 : c)) * HW + p);
        const op_t t0v = t0[b * C + c], Av = A[b * C + c];
        const op_t inv = op_t(1) / am::clamp_t(tv, t0v);
        const int64_t off = (b * C + c) * HW + p;
        const op_t Iv = load(I + off);
        op_t g = load(grad + off);
        if (clamp && !am::clamp_out_pass(am::recover(Iv, inv, Av), lo, hi)) g = op_t(0);
        if (gI) store(gI + off, g * inv);
        const op_t dt = am::clamp_t_grad(tv, t0v) == op_t(0) ? op_t(0) : -g * (Iv - Av) * inv * inv;
        if (Ct == 1) acc_t += dt;
        else if (gt) store(gt + off, dt);
        sA = g * (op_t(1) - inv);
      }
      if (gA) {
        sA = block_sum(sA);
        if (threadIdx.x == 0) gA[(b * C + c) * pl.inner + q_.i] = sA;
      }
    }
    if (active && gt && Ct == 1) store(gt + b * HW + p, acc_t);
  }
}

// ---- synthesize_haze, transmission_from_depth, recompose_k ------------------------------------
// Same layout as recover: an image-shaped [B,C,HW] tensor, a per-pixel map [B,Cm,HW] with
// Cm in {1, C} (t, depth or K), parameters [B,C] in the compute type.

template <typename T>
__device__ __forceinline__ const T* map_at(const T* m, int64_t b, int64_t c, int64_t Cm, int64_t HW, int64_t p) {
  return m + (b * Cm + (Cm == 1 ? 0 : c)) * HW + p;
}

template <typename T>
__global__ void synthesize_kernel(grid::Plan pl, const T* __restrict__ J, const T* __restrict__ t, const opmath<T>* __restrict__ A,
                                  T* __restrict__ I, int64_t C, int64_t HW, int64_t Ct) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    op_t tv = load(t + b * Ct * HW + p);
    for (int64_t c = 0; c < C; ++c) {
      if (Ct != 1 && c > 0) tv = load(map_at(t, b, c, Ct, HW, p));
      const int64_t off = (b * C + c) * HW + p;
      store(I + off, am::synthesize(load(J + off), tv, A[b * C + c]));
    }
  }
}

template <typename T>
__global__ void synthesize_backward_kernel(grid::Plan pl, const T* __restrict__ grad, const T* __restrict__ J, const T* __restrict__ t,
                                           const opmath<T>* __restrict__ A, T* __restrict__ gJ, T* __restrict__ gt,
                                           opmath<T>* __restrict__ gA, int64_t C, int64_t HW, int64_t Ct) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    const bool active = p < HW;
    op_t acc_t = 0;
    for (int64_t c = 0; c < C; ++c) {
      op_t sA = 0;
      if (active) {
        const op_t tv = load(map_at(t, b, c, Ct, HW, p));
        const int64_t off = (b * C + c) * HW + p;
        const op_t g = load(grad + off);
        if (gJ) store(gJ + off, g * tv);
        const op_t dt = g * am::synthesize_dt(load(J + off), A[b * C + c]);
        if (Ct == 1) acc_t += dt;
        else if (gt) store(gt + off, dt);
        sA = g * am::synthesize_dA(tv);
      }
      if (gA) {
        sA = block_sum(sA);
        if (threadIdx.x == 0) gA[(b * C + c) * pl.inner + q_.i] = sA;
      }
    }
    if (active && gt && Ct == 1) store(gt + b * HW + p, acc_t);
  }
}

// Synthesis from depth in one pass: t = exp(-beta d) per channel, never stored.
template <typename T>
__global__ void synthesize_depth_kernel(grid::Plan pl, const T* __restrict__ J, const T* __restrict__ depth,
                                        const opmath<T>* __restrict__ A, const opmath<T>* __restrict__ beta,
                                        T* __restrict__ I, int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    op_t dv = load(depth + b * Cd * HW + p);
    for (int64_t c = 0; c < C; ++c) {
      if (Cd != 1 && c > 0) dv = load(map_at(depth, b, c, Cd, HW, p));
      const int64_t off = (b * C + c) * HW + p;
      store(I + off, am::synthesize(load(J + off), am::transmission(dv, beta[b * C + c]), A[b * C + c]));
    }
  }
}

template <typename T>
__global__ void synthesize_depth_backward_kernel(grid::Plan pl, const T* __restrict__ grad, const T* __restrict__ J,
                                                 const T* __restrict__ depth, const opmath<T>* __restrict__ A,
                                                 const opmath<T>* __restrict__ beta, T* __restrict__ gJ,
                                                 T* __restrict__ gd, opmath<T>* __restrict__ gA,
                                                 opmath<T>* __restrict__ gbeta, int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    const bool active = p < HW;
    op_t acc_d = 0;
    for (int64_t c = 0; c < C; ++c) {
      op_t sA = 0, sb = 0;
      if (active) {
        const op_t dv = load(map_at(depth, b, c, Cd, HW, p));
        const op_t Av = A[b * C + c], bv = beta[b * C + c];
        const op_t tv = am::transmission(dv, bv);
        const int64_t off = (b * C + c) * HW + p;
        const op_t g = load(grad + off);
        if (gJ) store(gJ + off, g * tv);
        const op_t gt = g * am::synthesize_dt(load(J + off), Av);  // dL/dt
        const op_t dd = gt * am::transmission_dd(tv, bv);
        if (Cd == 1) acc_d += dd;
        else if (gd) store(gd + off, dd);
        sA = g * am::synthesize_dA(tv);
        sb = gt * am::transmission_dbeta(tv, dv);
      }
      if (gA) {
        sA = block_sum(sA);
        if (threadIdx.x == 0) gA[(b * C + c) * pl.inner + q_.i] = sA;
      }
      if (gbeta) {
        sb = block_sum(sb);
        if (threadIdx.x == 0) gbeta[(b * C + c) * pl.inner + q_.i] = sb;
      }
    }
    if (active && gd && Cd == 1) store(gd + b * HW + p, acc_d);
  }
}

template <typename T>
__global__ void transmission_kernel(grid::Plan pl, const T* __restrict__ depth, const opmath<T>* __restrict__ beta, T* __restrict__ t,
                                    int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    op_t dv = load(depth + b * Cd * HW + p);
    for (int64_t c = 0; c < C; ++c) {
      if (Cd != 1 && c > 0) dv = load(map_at(depth, b, c, Cd, HW, p));
      store(t + (b * C + c) * HW + p, am::transmission(dv, beta[b * C + c]));
    }
  }
}

template <typename T>
__global__ void transmission_backward_kernel(grid::Plan pl, const T* __restrict__ grad, const T* __restrict__ depth,
                                             const opmath<T>* __restrict__ beta, T* __restrict__ gd,
                                             opmath<T>* __restrict__ gbeta, int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    const bool active = p < HW;
    op_t acc_d = 0;
    for (int64_t c = 0; c < C; ++c) {
      op_t sb = 0;
      if (active) {
        const op_t dv = load(map_at(depth, b, c, Cd, HW, p));
        const op_t bv = beta[b * C + c];
        const int64_t off = (b * C + c) * HW + p;
        const op_t gt = load(grad + off) * am::transmission(dv, bv);
        const op_t dd = gt * am::transmission_dd(op_t(1), bv);
        if (Cd == 1) acc_d += dd;
        else if (gd) store(gd + off, dd);
        sb = gt * am::transmission_dbeta(op_t(1), dv);
      }
      if (gbeta) {
        sb = block_sum(sb);
        if (threadIdx.x == 0) gbeta[(b * C + c) * pl.inner + q_.i] = sb;
      }
    }
    if (active && gd && Cd == 1) store(gd + b * HW + p, acc_d);
  }
}

template <typename T>
__global__ void recompose_k_kernel(grid::Plan pl, const T* __restrict__ I, const T* __restrict__ K, const opmath<T>* __restrict__ bias,
                                   T* __restrict__ J, int64_t C, int64_t HW, int64_t Ck) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    if (p >= HW) continue;
    op_t kv = load(K + b * Ck * HW + p);
    for (int64_t c = 0; c < C; ++c) {
      if (Ck != 1 && c > 0) kv = load(map_at(K, b, c, Ck, HW, p));
      const int64_t off = (b * C + c) * HW + p;
      store(J + off, am::recompose_k(load(I + off), kv, bias[b * C + c]));
    }
  }
}

template <typename T>
__global__ void recompose_k_backward_kernel(grid::Plan pl, const T* __restrict__ grad, const T* __restrict__ I, const T* __restrict__ K,
                                            T* __restrict__ gI, T* __restrict__ gK, opmath<T>* __restrict__ gb,
                                            int64_t C, int64_t HW, int64_t Ck) {
  using op_t = opmath<T>;
  for (FD_UNITS(pl, u)) {
    const grid::Unit q_ = grid::unit_of(pl, u);
    const int64_t b = q_.o;
    const int64_t p = q_.i * blockDim.x + threadIdx.x;
    const bool active = p < HW;
    op_t acc_k = 0;
    for (int64_t c = 0; c < C; ++c) {
      op_t sb = 0;
      if (active) {
        const int64_t off = (b * C + c) * HW + p;
        const op_t g = load(grad + off);
        if (gI) store(gI + off, g * load(map_at(K, b, c, Ck, HW, p)));
        const op_t dk = g * am::recompose_k_dK(load(I + off));
        if (Ck == 1) acc_k += dk;
        else if (gK) store(gK + off, dk);
        sb = g;
      }
      if (gb) {
        sb = block_sum(sb);
        if (threadIdx.x == 0) gb[(b * C + c) * pl.inner + q_.i] = sb;
      }
    }
    if (active && gK && Ck == 1) store(gK + b * HW + p, acc_k);
  }
}

// Second pass of the parameter gradients: g[o] = sum of part[o * n + 0 .. n-1], in a fixed
// order (each thread a strided sequential sum, then the block tree): deterministic.
template <typename op_t>
__global__ void param_reduce_kernel(grid::Plan pl, const op_t* __restrict__ part, op_t* __restrict__ g, int64_t n) {
  for (FD_UNITS(pl, u)) {
    op_t s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += part[u * n + i];
    s = block_sum(s);
    if (threadIdx.x == 0) g[u] = s;
  }
}

template <typename op_t>
void param_reduce(const op_t* part, op_t* g, int64_t BC, int64_t n, cudaStream_t stream) {
  if (!g) return;
  const grid::Plan pr = grid::param_reduce(BC);
  param_reduce_kernel<op_t><<<FD_GRID(pr), FD_BLOCK(pr), 0, stream>>>(pr, part, g, n);
}

}  // namespace

template <typename T>
void recover_cuda_launch(const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* J, int64_t B, int64_t C,
                         int64_t HW, int64_t Ct, double lo, double hi, bool clamp, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  recover_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, I, t, A, t0, J, C, HW, Ct, static_cast<opmath<T>>(lo),
                                                              static_cast<opmath<T>>(hi), clamp);
}

template <typename T>
void recover_backward_cuda_launch(const T* grad, const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* gI,
                                  T* gt, opmath<T>* gA, int64_t B, int64_t C, int64_t HW, int64_t Ct, double lo,
                                  double hi, bool clamp, opmath<T>* work, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  recover_backward_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, 
      grad, I, t, A, t0, gI, gt, gA ? work : nullptr, C, HW, Ct, static_cast<opmath<T>>(lo), static_cast<opmath<T>>(hi), clamp);
  param_reduce<opmath<T>>(work, gA, B * C, pl.inner, stream);
}

template <typename T>
void synthesize_haze_cuda_launch(const T* J, const T* t, const opmath<T>* A, T* I, int64_t B, int64_t C, int64_t HW,
                                 int64_t Ct, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  synthesize_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, J, t, A, I, C, HW, Ct);
}

template <typename T>
void synthesize_haze_backward_cuda_launch(const T* grad, const T* J, const T* t, const opmath<T>* A, T* gJ, T* gt,
                                          opmath<T>* gA, int64_t B, int64_t C, int64_t HW, int64_t Ct,
                                          opmath<T>* work, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  synthesize_backward_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, grad, J, t, A, gJ, gt, gA ? work : nullptr, C, HW, Ct);
  param_reduce<opmath<T>>(work, gA, B * C, pl.inner, stream);
}

template <typename T>
void synthesize_haze_depth_cuda_launch(const T* J, const T* depth, const opmath<T>* A, const opmath<T>* beta, T* I,
                                       int64_t B, int64_t C, int64_t HW, int64_t Cd, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  synthesize_depth_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, J, depth, A, beta, I, C, HW, Cd);
}

template <typename T>
void synthesize_haze_depth_backward_cuda_launch(const T* grad, const T* J, const T* depth, const opmath<T>* A,
                                                const opmath<T>* beta, T* gJ, T* gd, opmath<T>* gA, opmath<T>* gbeta,
                                                int64_t B, int64_t C, int64_t HW, int64_t Cd, opmath<T>* work, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  synthesize_depth_backward_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, grad, J, depth, A, beta, gJ, gd, gA ? work : nullptr,
                                                                                 gbeta ? work + B * C * pl.inner : nullptr, C, HW, Cd);
  param_reduce<opmath<T>>(work, gA, B * C, pl.inner, stream);
  param_reduce<opmath<T>>(work + B * C * pl.inner, gbeta, B * C, pl.inner, stream);
}

template <typename T>
void transmission_from_depth_cuda_launch(const T* depth, const opmath<T>* beta, T* t, int64_t B, int64_t C, int64_t HW,
                                         int64_t Cd, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  transmission_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, depth, beta, t, C, HW, Cd);
}

template <typename T>
void transmission_from_depth_backward_cuda_launch(const T* grad, const T* depth, const opmath<T>* beta, T* gd,
                                                  opmath<T>* gbeta, int64_t B, int64_t C, int64_t HW, int64_t Cd,
                                                  opmath<T>* work, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  transmission_backward_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, grad, depth, beta, gd, gbeta ? work : nullptr, C, HW, Cd);
  param_reduce<opmath<T>>(work, gbeta, B * C, pl.inner, stream);
}

template <typename T>
void recompose_k_cuda_launch(const T* I, const T* K, const opmath<T>* bias, T* J, int64_t B, int64_t C, int64_t HW,
                             int64_t Ck, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  recompose_k_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, I, K, bias, J, C, HW, Ck);
}

template <typename T>
void recompose_k_backward_cuda_launch(const T* grad, const T* I, const T* K, T* gI, T* gK, opmath<T>* gb, int64_t B,
                                      int64_t C, int64_t HW, int64_t Ck, opmath<T>* work, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  const grid::Plan pl = grid::asm_pixels(B, HW);
  recompose_k_backward_kernel<T><<<FD_GRID(pl), FD_BLOCK(pl), 0, stream>>>(pl, grad, I, K, gI, gK, gb ? work : nullptr, C, HW, Ck);
  param_reduce<opmath<T>>(work, gb, B * C, pl.inner, stream);
}

#define FD_INSTANTIATE(T)                                                                                             \
  template void recover_cuda_launch<T>(const T*, const T*, const opmath<T>*, const opmath<T>*, T*, int64_t, int64_t, \
                                       int64_t, int64_t, double, double, bool, cudaStream_t);                        \
  template void recover_backward_cuda_launch<T>(const T*, const T*, const T*, const opmath<T>*, const opmath<T>*, T*, \
                                                T*, opmath<T>*, int64_t, int64_t, int64_t, int64_t, double, double,   \
                                                bool, opmath<T>*, cudaStream_t);                                               \
  template void synthesize_haze_cuda_launch<T>(const T*, const T*, const opmath<T>*, T*, int64_t, int64_t, int64_t,    \
                                               int64_t, cudaStream_t);                                                \
  template void synthesize_haze_backward_cuda_launch<T>(const T*, const T*, const T*, const opmath<T>*, T*, T*,        \
                                                        opmath<T>*, int64_t, int64_t, int64_t, int64_t, opmath<T>*, cudaStream_t); \
  template void synthesize_haze_depth_cuda_launch<T>(const T*, const T*, const opmath<T>*, const opmath<T>*, T*,     \
                                                     int64_t, int64_t, int64_t, int64_t, cudaStream_t);              \
  template void synthesize_haze_depth_backward_cuda_launch<T>(const T*, const T*, const T*, const opmath<T>*,         \
                                                              const opmath<T>*, T*, T*, opmath<T>*, opmath<T>*,       \
                                                              int64_t, int64_t, int64_t, int64_t, opmath<T>*, cudaStream_t);      \
  template void transmission_from_depth_cuda_launch<T>(const T*, const opmath<T>*, T*, int64_t, int64_t, int64_t,      \
                                                       int64_t, cudaStream_t);                                        \
  template void transmission_from_depth_backward_cuda_launch<T>(const T*, const T*, const opmath<T>*, T*, opmath<T>*,  \
                                                                int64_t, int64_t, int64_t, int64_t, opmath<T>*, cudaStream_t);    \
  template void recompose_k_cuda_launch<T>(const T*, const T*, const opmath<T>*, T*, int64_t, int64_t, int64_t,        \
                                           int64_t, cudaStream_t);                                                    \
  template void recompose_k_backward_cuda_launch<T>(const T*, const T*, const T*, T*, T*, opmath<T>*, int64_t, int64_t, \
                                                    int64_t, int64_t, opmath<T>*, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
