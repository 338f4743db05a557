"""Reference contrastive distance (SPEC section 4): AECR-Net ``ContrastLoss`` (Wu et al., CVPR
2021), C2PNet ``C2R`` (Zheng et al., CVPR 2023), DCMPNet ``CR_loss`` (Zhang et al., CVPR 2024).

Per layer, with anchor a (the network output's features), positive p (the clear image's) and
negatives n_k (the hazy input's, and optionally others), all of one shape::

    d(x, y) = mean |x - y|                                   (nn.L1Loss, reduction 'mean')
    ratio   = d(a, p) / (sum_k w_k d(a, n_k) + eps)          (ablation: d(a, p))
    loss    = sum_l lambda_l ratio_l

p and n are detached (gradients reach a only). Written as the sources write it (one
``nn.functional.l1_loss`` per layer and negative), computed in float32 for half and float32
inputs and float64 for float64; the result is a 0-d tensor of that dtype (float32 for half: a
ratio near 1 / eps = 1e7 does not fit fp16). Autograd by PyTorch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _weights(w, K: int, dt, device) -> list:
    if w is None:
        return [1.0 / K] * K
    if isinstance(w, torch.Tensor):
        return list(w.detach().to(dt).reshape(-1).unbind(0))
    return [float(v) for v in w]


def contrastive_distance(anchor: torch.Tensor, positive: torch.Tensor, negatives, negative_weights=None,
                         eps: float = 1e-7, ablation: bool = False) -> torch.Tensor:
    """ratio = d(a, p) / (sum_k w_k d(a, n_k) + eps) for one layer (d(a, p) with ``ablation``).

    ``negatives``: a [K, *anchor.shape] tensor or a sequence of K tensors; ``negative_weights``
    None means 1/K each (1 for a single negative, as AECR-Net).
    """
    dt = compute_dtype(anchor)
    a = anchor.to(dt)
    d_ap = F.l1_loss(a, positive.detach().to(dt))
    if ablation:
        return d_ap
    negs = list(negatives.unbind(0)) if isinstance(negatives, torch.Tensor) else list(negatives)
    w = _weights(negative_weights, len(negs), dt, anchor.device)
    den = 0.0
    for wk, n in zip(w, negs):
        den = den + wk * F.l1_loss(a, n.detach().to(dt))
    return d_ap / (den + eps)


def contrastive_loss(anchors: Sequence[torch.Tensor], positives: Sequence[torch.Tensor], negatives,
                     layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), negative_weights=None, eps: float = 1e-7,
                     ablation: bool = False) -> torch.Tensor:
    """sum_l lambda_l ratio_l over the layers; ``negatives[l]`` holds layer l's negatives."""
    loss = 0.0
    for lam, a, p, n in zip(layer_weights, anchors, positives, negatives):
        lam = lam.detach() if isinstance(lam, torch.Tensor) else float(lam)
        loss = loss + lam * contrastive_distance(a, p, n, negative_weights, eps, ablation)
    return loss
