// Schemas of the contrastive distance ops (SPEC section 4). The Python layer
// (fastdehaze/ops/contrastive.py) validates the arguments, detaches positives and negatives,
// and passes the weights as contiguous 1-D tensors of the compute dtype (float32 for half and
// float32 inputs, float64 for float64). The Triton variants (`<name>_triton`) are defined in
// Python with the same schemas.
//
// Both forward ops return (loss, dists): loss a 0-d tensor of the compute dtype and dists the
// [L, 1 + K] table of mean distances (column 0 d(a,p), column 1 + k d(a,n_k)), saved for the
// backward (not differentiable). All features share one dtype; the features of one layer share
// one shape; any strides (read in the anchor's memory order when the strides agree).
#include <torch/library.h>
#include "fastdehaze/common.h"

TORCH_LIBRARY_FRAGMENT(fastdehaze, m) {
  // One layer: anchor, positive [*]; negatives K tensors [*]; negative_weights [K].
  m.def("contrastive_distance(Tensor anchor, Tensor positive, Tensor[] negatives, Tensor negative_weights, "
        "float eps, bool ablation) -> (Tensor, Tensor)");
  // -> grad of the anchor (like anchor).
  m.def("contrastive_distance_backward(Tensor grad, Tensor anchor, Tensor positive, Tensor[] negatives, "
        "Tensor negative_weights, Tensor dists, float eps, bool ablation) -> Tensor");
  // L layers: anchors[l], positives[l]; negatives flat, layer-major: negatives[l * K + k];
  // layer_weights [L]; negative_weights [K] shared by the layers.
  m.def("contrastive_loss(Tensor[] anchors, Tensor[] positives, Tensor[] negatives, Tensor layer_weights, "
        "Tensor negative_weights, float eps, bool ablation) -> (Tensor, Tensor)");
  // -> grads of the anchors (each like its anchor).
  m.def("contrastive_loss_backward(Tensor grad, Tensor[] anchors, Tensor[] positives, Tensor[] negatives, "
        "Tensor layer_weights, Tensor negative_weights, Tensor dists, float eps, bool ablation) -> Tensor[]");
  // C++ CPU only: contrastive_loss that also returns `signs`, sign(a - p) and every sign(a - n_k)
  // packed 2 bits per pair and element (int32 [sum_l Qr ceil(N_l / 16)], Qr = 1 + K or 1 in
  // ablation mode; layout in csrc/cpu/contrastive.cpp), so that its backward reads the signs
  // instead of the features (positives and negatives need not be saved for it).
  m.def("contrastive_loss_signs(Tensor[] anchors, Tensor[] positives, Tensor[] negatives, Tensor layer_weights, "
        "Tensor negative_weights, float eps, bool ablation) -> (Tensor, Tensor, Tensor)");
  m.def("contrastive_loss_signs_backward(Tensor grad, Tensor[] anchors, Tensor layer_weights, "
        "Tensor negative_weights, Tensor dists, Tensor signs, float eps, bool ablation) -> Tensor[]");
}

FD_PYTHON_MODULE(_C_contrastive)
