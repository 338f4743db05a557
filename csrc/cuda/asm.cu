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

#define FD_INSTANTIATE(T)                                                                                             \
  template void recover_cuda_launch<T>(const T*, const T*, const opmath<T>*, const opmath<T>*, T*, int64_t, int64_t, \
                                       int64_t, int64_t, double, double, bool, cudaStream_t);                        \
  template void recover_backward_cuda_launch<T>(const T*, const T*, const T*, const opmath<T>*, const opmath<T>*, T*, \
                                                T*, opmath<T>*, int64_t, int64_t, int64_t, int64_t, double, double,   \
                                                bool, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace fastdehaze
