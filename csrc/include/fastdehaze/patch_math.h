// Per-pixel brightness measures and the rank order of patch_brightness_rank (SPEC section 3),
// written once and used by csrc/cpu/patch.cpp and csrc/cuda/patch.cu, so what the CPU tests
// check is what the GPU runs. T is the compute ("opmath") type: float for float/half/bfloat16
// storage, double for double.
#pragma once
#include <cstdint>

#include "fastdehaze/common.h"

namespace fastdehaze {
namespace patch_math {

// Measure codes of the registered ops (fastdehaze/ops/patch.py: MEASURE_CODES).
constexpr int kLuma = 0;  // BT.601 0.299 R + 0.587 G + 0.114 B (3 channels)
constexpr int kMean = 1;  // mean over channels
constexpr int kDark = 2;  // channel min (NaN-propagating)
constexpr int kMax = 3;   // channel max (NaN-propagating)

template <typename T>
FD_HD T luma_weight(int64_t c) { return c == 0 ? T(0.299) : (c == 1 ? T(0.587) : T(0.114)); }

// Folds channel c's value v into the brightness accumulator (acc is ignored for c == 0), in the
// order of the reference: ((0.299 R + 0.587 G) + 0.114 B), sum then / C, running min/max.
template <typename T>
FD_HD T measure_step(T acc, T v, int64_t c, int measure) {
  switch (measure) {
    case kLuma: return c == 0 ? luma_weight<T>(0) * v : acc + luma_weight<T>(c) * v;
    case kMean: return c == 0 ? v : acc + v;
    case kDark: return c == 0 ? v : nan_min(acc, v);
    default: return c == 0 ? v : nan_max(acc, v);
  }
}

template <typename T>
FD_HD T measure_finish(T acc, int64_t C, int measure) { return measure == kMean ? acc / T(C) : acc; }

// Whether patch a (score sa, grid index ia) comes before patch b in the rank order: the order of
// torch.sort(scores, descending=desc, stable=True): NaN is the largest (first when descending,
// last when ascending), equal scores (and two NaNs) keep the lower index first. A strict total
// order on (score, index) pairs, so any selection algorithm gives the reference's result.
template <typename T>
FD_HD bool precedes(T sa, int64_t ia, T sb, int64_t ib, bool desc) {
  const bool na = sa != sa, nb = sb != sb;
  if (na || nb) {
    if (na && nb) return ia < ib;
    return desc ? na : nb;
  }
  if (sa == sb) return ia < ib;
  return desc ? sa > sb : sa < sb;
}

}  // namespace patch_math
}  // namespace fastdehaze
