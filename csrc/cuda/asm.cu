// CUDA kernels of the atmospheric scattering model ops (SPEC section 1). One thread per pixel,
// looping over channels (a broadcast t is read once per pixel); grid = (pixel blocks, B).
// The per-element math is csrc/include/fastdehaze/asm_math.h, shared with the CPU kernels.
#include "asm.cuh"
#include "fastdehaze/asm_math.h"

namespace fastdehaze {
namespace {

namespace am = asm_math;
constexpr int kThreads = 256;

template <typename T>
__global__ void recover_kernel(const T* __restrict__ I, const T* __restrict__ t, const opmath<T>* __restrict__ A,
                               const opmath<T>* __restrict__ t0, T* __restrict__ J, int64_t C, int64_t HW, int64_t Ct,
                               opmath<T> lo, opmath<T> hi, bool clamp) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= HW) return;
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

template <typename T>
__global__ void recover_backward_kernel(const T* __restrict__ grad, const T* __restrict__ I, const T* __restrict__ t,
                                        const opmath<T>* __restrict__ A, const opmath<T>* __restrict__ t0,
                                        T* __restrict__ gI, T* __restrict__ gt, opmath<T>* __restrict__ gA, int64_t C,
                                        int64_t HW, int64_t Ct, opmath<T> lo, opmath<T> hi, bool clamp) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
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
      if (threadIdx.x == 0) atomicAdd(gA + b * C + c, sA);
    }
  }
  if (active && gt && Ct == 1) store(gt + b * HW + p, acc_t);
}

// ---- synthesize_haze, transmission_from_depth, recompose_k ------------------------------------
// Same layout as recover: an image-shaped [B,C,HW] tensor, a per-pixel map [B,Cm,HW] with
// Cm in {1, C} (t, depth or K), parameters [B,C] in the compute type.

template <typename T>
__device__ __forceinline__ const T* map_at(const T* m, int64_t b, int64_t c, int64_t Cm, int64_t HW, int64_t p) {
  return m + (b * Cm + (Cm == 1 ? 0 : c)) * HW + p;
}

template <typename T>
__global__ void synthesize_kernel(const T* __restrict__ J, const T* __restrict__ t, const opmath<T>* __restrict__ A,
                                  T* __restrict__ I, int64_t C, int64_t HW, int64_t Ct) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= HW) return;
  op_t tv = load(t + b * Ct * HW + p);
  for (int64_t c = 0; c < C; ++c) {
    if (Ct != 1 && c > 0) tv = load(map_at(t, b, c, Ct, HW, p));
    const int64_t off = (b * C + c) * HW + p;
    store(I + off, am::synthesize(load(J + off), tv, A[b * C + c]));
  }
}

template <typename T>
__global__ void synthesize_backward_kernel(const T* __restrict__ grad, const T* __restrict__ J, const T* __restrict__ t,
                                           const opmath<T>* __restrict__ A, T* __restrict__ gJ, T* __restrict__ gt,
                                           opmath<T>* __restrict__ gA, int64_t C, int64_t HW, int64_t Ct) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
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
      if (threadIdx.x == 0) atomicAdd(gA + b * C + c, sA);
    }
  }
  if (active && gt && Ct == 1) store(gt + b * HW + p, acc_t);
}

// Synthesis from depth in one pass: t = exp(-beta d) per channel, never stored.
template <typename T>
__global__ void synthesize_depth_kernel(const T* __restrict__ J, const T* __restrict__ depth,
                                        const opmath<T>* __restrict__ A, const opmath<T>* __restrict__ beta,
                                        T* __restrict__ I, int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= HW) return;
  op_t dv = load(depth + b * Cd * HW + p);
  for (int64_t c = 0; c < C; ++c) {
    if (Cd != 1 && c > 0) dv = load(map_at(depth, b, c, Cd, HW, p));
    const int64_t off = (b * C + c) * HW + p;
    store(I + off, am::synthesize(load(J + off), am::transmission(dv, beta[b * C + c]), A[b * C + c]));
  }
}

template <typename T>
__global__ void synthesize_depth_backward_kernel(const T* __restrict__ grad, const T* __restrict__ J,
                                                 const T* __restrict__ depth, const opmath<T>* __restrict__ A,
                                                 const opmath<T>* __restrict__ beta, T* __restrict__ gJ,
                                                 T* __restrict__ gd, opmath<T>* __restrict__ gA,
                                                 opmath<T>* __restrict__ gbeta, int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
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
      if (threadIdx.x == 0) atomicAdd(gA + b * C + c, sA);
    }
    if (gbeta) {
      sb = block_sum(sb);
      if (threadIdx.x == 0) atomicAdd(gbeta + b * C + c, sb);
    }
  }
  if (active && gd && Cd == 1) store(gd + b * HW + p, acc_d);
}

template <typename T>
__global__ void transmission_kernel(const T* __restrict__ depth, const opmath<T>* __restrict__ beta, T* __restrict__ t,
                                    int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= HW) return;
  op_t dv = load(depth + b * Cd * HW + p);
  for (int64_t c = 0; c < C; ++c) {
    if (Cd != 1 && c > 0) dv = load(map_at(depth, b, c, Cd, HW, p));
    store(t + (b * C + c) * HW + p, am::transmission(dv, beta[b * C + c]));
  }
}

template <typename T>
__global__ void transmission_backward_kernel(const T* __restrict__ grad, const T* __restrict__ depth,
                                             const opmath<T>* __restrict__ beta, T* __restrict__ gd,
                                             opmath<T>* __restrict__ gbeta, int64_t C, int64_t HW, int64_t Cd) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
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
      if (threadIdx.x == 0) atomicAdd(gbeta + b * C + c, sb);
    }
  }
  if (active && gd && Cd == 1) store(gd + b * HW + p, acc_d);
}

template <typename T>
__global__ void recompose_k_kernel(const T* __restrict__ I, const T* __restrict__ K, const opmath<T>* __restrict__ bias,
                                   T* __restrict__ J, int64_t C, int64_t HW, int64_t Ck) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= HW) return;
  op_t kv = load(K + b * Ck * HW + p);
  for (int64_t c = 0; c < C; ++c) {
    if (Ck != 1 && c > 0) kv = load(map_at(K, b, c, Ck, HW, p));
    const int64_t off = (b * C + c) * HW + p;
    store(J + off, am::recompose_k(load(I + off), kv, bias[b * C + c]));
  }
}

template <typename T>
__global__ void recompose_k_backward_kernel(const T* __restrict__ grad, const T* __restrict__ I, const T* __restrict__ K,
                                            T* __restrict__ gI, T* __restrict__ gK, opmath<T>* __restrict__ gb,
                                            int64_t C, int64_t HW, int64_t Ck) {
  using op_t = opmath<T>;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
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
      if (threadIdx.x == 0) atomicAdd(gb + b * C + c, sb);
    }
  }
  if (active && gK && Ck == 1) store(gK + b * HW + p, acc_k);
}

dim3 grid_for(int64_t B, int64_t HW) { return dim3(static_cast<unsigned>((HW + kThreads - 1) / kThreads), static_cast<unsigned>(B)); }

}  // namespace

template <typename T>
void recover_cuda_launch(const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* J, int64_t B, int64_t C,
                         int64_t HW, int64_t Ct, double lo, double hi, bool clamp, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  recover_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(I, t, A, t0, J, C, HW, Ct, static_cast<opmath<T>>(lo),
                                                              static_cast<opmath<T>>(hi), clamp);
}

template <typename T>
void recover_backward_cuda_launch(const T* grad, const T* I, const T* t, const opmath<T>* A, const opmath<T>* t0, T* gI,
                                  T* gt, opmath<T>* gA, int64_t B, int64_t C, int64_t HW, int64_t Ct, double lo,
                                  double hi, bool clamp, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  recover_backward_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(
      grad, I, t, A, t0, gI, gt, gA, C, HW, Ct, static_cast<opmath<T>>(lo), static_cast<opmath<T>>(hi), clamp);
}

template <typename T>
void synthesize_haze_cuda_launch(const T* J, const T* t, const opmath<T>* A, T* I, int64_t B, int64_t C, int64_t HW,
                                 int64_t Ct, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  synthesize_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(J, t, A, I, C, HW, Ct);
}

template <typename T>
void synthesize_haze_backward_cuda_launch(const T* grad, const T* J, const T* t, const opmath<T>* A, T* gJ, T* gt,
                                          opmath<T>* gA, int64_t B, int64_t C, int64_t HW, int64_t Ct,
                                          cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  synthesize_backward_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(grad, J, t, A, gJ, gt, gA, C, HW, Ct);
}

template <typename T>
void synthesize_haze_depth_cuda_launch(const T* J, const T* depth, const opmath<T>* A, const opmath<T>* beta, T* I,
                                       int64_t B, int64_t C, int64_t HW, int64_t Cd, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  synthesize_depth_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(J, depth, A, beta, I, C, HW, Cd);
}

template <typename T>
void synthesize_haze_depth_backward_cuda_launch(const T* grad, const T* J, const T* depth, const opmath<T>* A,
                                                const opmath<T>* beta, T* gJ, T* gd, opmath<T>* gA, opmath<T>* gbeta,
                                                int64_t B, int64_t C, int64_t HW, int64_t Cd, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  synthesize_depth_backward_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(grad, J, depth, A, beta, gJ, gd, gA,
                                                                                 gbeta, C, HW, Cd);
}

template <typename T>
void transmission_from_depth_cuda_launch(const T* depth, const opmath<T>* beta, T* t, int64_t B, int64_t C, int64_t HW,
                                         int64_t Cd, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  transmission_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(depth, beta, t, C, HW, Cd);
}

template <typename T>
void transmission_from_depth_backward_cuda_launch(const T* grad, const T* depth, const opmath<T>* beta, T* gd,
                                                  opmath<T>* gbeta, int64_t B, int64_t C, int64_t HW, int64_t Cd,
                                                  cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  transmission_backward_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(grad, depth, beta, gd, gbeta, C, HW, Cd);
}

template <typename T>
void recompose_k_cuda_launch(const T* I, const T* K, const opmath<T>* bias, T* J, int64_t B, int64_t C, int64_t HW,
                             int64_t Ck, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  recompose_k_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(I, K, bias, J, C, HW, Ck);
}

template <typename T>
void recompose_k_backward_cuda_launch(const T* grad, const T* I, const T* K, T* gI, T* gK, opmath<T>* gb, int64_t B,
                                      int64_t C, int64_t HW, int64_t Ck, cudaStream_t stream) {
  if (B == 0 || C == 0 || HW == 0) return;
  recompose_k_backward_kernel<T><<<grid_for(B, HW), kThreads, 0, stream>>>(grad, I, K, gI, gK, gb, C, HW, Ck);
}

#define FD_INSTANTIATE(T)                                                                                             \
  template void recover_cuda_launch<T>(const T*, const T*, const opmath<T>*, const opmath<T>*, T*, int64_t, int64_t, \
                                       int64_t, int64_t, double, double, bool, cudaStream_t);                        \
  template void recover_backward_cuda_launch<T>(const T*, const T*, const T*, const opmath<T>*, const opmath<T>*, T*, \
                                                T*, opmath<T>*, int64_t, int64_t, int64_t, int64_t, double, double,   \
                                                bool, cudaStream_t);                                               \
  template void synthesize_haze_cuda_launch<T>(const T*, const T*, const opmath<T>*, T*, int64_t, int64_t, int64_t,    \
                                               int64_t, cudaStream_t);                                                \
  template void synthesize_haze_backward_cuda_launch<T>(const T*, const T*, const T*, const opmath<T>*, T*, T*,        \
                                                        opmath<T>*, int64_t, int64_t, int64_t, int64_t, cudaStream_t); \
  template void synthesize_haze_depth_cuda_launch<T>(const T*, const T*, const opmath<T>*, const opmath<T>*, T*,     \
                                                     int64_t, int64_t, int64_t, int64_t, cudaStream_t);              \
  template void synthesize_haze_depth_backward_cuda_launch<T>(const T*, const T*, const T*, const opmath<T>*,         \
                                                              const opmath<T>*, T*, T*, opmath<T>*, opmath<T>*,       \
                                                              int64_t, int64_t, int64_t, int64_t, cudaStream_t);      \
  template void transmission_from_depth_cuda_launch<T>(const T*, const opmath<T>*, T*, int64_t, int64_t, int64_t,      \
                                                       int64_t, cudaStream_t);                                        \
  template void transmission_from_depth_backward_cuda_launch<T>(const T*, const T*, const opmath<T>*, T*, opmath<T>*,  \
                                                                int64_t, int64_t, int64_t, int64_t, cudaStream_t);    \
  template void recompose_k_cuda_launch<T>(const T*, const T*, const opmath<T>*, T*, int64_t, int64_t, int64_t,        \
                                           int64_t, cudaStream_t);                                                    \
  template void recompose_k_backward_cuda_launch<T>(const T*, const T*, const T*, T*, T*, opmath<T>*, int64_t, int64_t, \
                                                    int64_t, int64_t, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
