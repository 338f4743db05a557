// Launchers of csrc/cuda/contrastive.cu (contrastive distance, SPEC section 4), instantiated
// for float, double, __half and __nv_bfloat16. Features are dense and, within a layer, share
// one memory order (the registration copies any that do not), so a layer is a flat array of
// N[l] elements. One launch covers a whole table of layers (up to kMaxLayers layers and
// kMaxNegPtrs negative pointers: the table travels as a kernel parameter, no host-to-device copy).
#pragma once
#include "fastdehaze/cuda_common.h"

namespace fastdehaze {

constexpr int kContrastiveMaxLayers = 16;
constexpr int kContrastiveMaxNegPtrs = 160;

// Elements per block of the kernels (the registration sizes block0 with it).
int64_t contrastive_block_elems();

template <typename T>
struct ContrastiveTable {
  const T* a[kContrastiveMaxLayers];
  const T* p[kContrastiveMaxLayers];
  const T* n[kContrastiveMaxNegPtrs];  // n[l * K + k]
  T* g[kContrastiveMaxLayers];         // anchor gradients (backward only)
  int64_t N[kContrastiveMaxLayers];
  int64_t block0[kContrastiveMaxLayers + 1];  // first block of layer l; block0[L] = grid size
  int L, K;
};

// Writes sum |a - p| and sum |a - n_k| of every layer of the table to sums[l * (1 + K) + q]
// (double; two passes through work, block0[L] * (1 + K) doubles: deterministic), then writes dists[l * (1 + K) + q] = sums / N (compute
// type) and term[l] = lambda_l ratio_l (compute type). sums, dists, term, lw point at the
// table's first layer. In ablation mode only column 0 is summed; the others are set to 0.
template <typename T>
void contrastive_forward_cuda_launch(const ContrastiveTable<T>& tab, double* sums, double* work, opmath<T>* dists,
                                     opmath<T>* term,
                                     const opmath<T>* lw, const opmath<T>* w, double eps, bool ablation,
                                     cudaStream_t stream);

// Writes the anchor gradients tab.g[l] from the saved dists (pointing at the table's first
// layer) and the incoming gradient grad (0-d, compute type, on the device).
template <typename T>
void contrastive_backward_cuda_launch(const ContrastiveTable<T>& tab, const opmath<T>* grad, const opmath<T>* dists,
                                      const opmath<T>* lw, const opmath<T>* w, double eps, bool ablation,
                                      cudaStream_t stream);

}  // namespace fastdehaze
