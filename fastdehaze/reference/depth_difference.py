"""Reference depth-difference weighting and depth loss (DCMPNet, CVPR 2024, ``train.py``,
"difference perception"; SPEC section 5).

    diff    = J^ - J                                          (signed, [B,C,H,W])
    P       = softmax over all C*H*W values of diff, per image
    W       = sum_c (P + eps)                                 ([B,1,H,W]; eps = 1e-7)
    L_depth = L1(W * D^, W * D) + L1(D^, D)                   (L1 = mean absolute error)

``normalize=True`` (our addition) gives W = H*W * sum_c P instead (mean exactly 1, no eps).
The softmax does not depend on the order of its values, so DCMPNet's permute to NHWC before
the flatten does not change P. Half inputs are computed in float32; float64 in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def difference_perception_weight(diff: torch.Tensor, eps: float = 1e-7, normalize: bool = False) -> torch.Tensor:
    """W [B,1,H,W] in diff's dtype (computed in the compute dtype); autograd by PyTorch."""
    B, C, H, W = diff.shape
    P = torch.softmax(diff.to(compute_dtype(diff)).reshape(B, C * H * W), dim=1).reshape(B, C, H, W)
    if normalize:
        Wt = P.sum(dim=1, keepdim=True) * float(H * W)
    else:
        Wt = (P + eps).sum(dim=1, keepdim=True)
    return Wt.to(diff.dtype)


def depth_difference_loss(dehazed: torch.Tensor, clear: torch.Tensor, depth_pred: torch.Tensor,
                          depth_target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """L_depth as a 0-d tensor in the compute dtype (float32 for half inputs). The inputs are
    promoted to their common dtype first; W is not detached (as in DCMPNet)."""
    dt = torch.promote_types(torch.promote_types(dehazed.dtype, clear.dtype),
                             torch.promote_types(depth_pred.dtype, depth_target.dtype))
    cdt = torch.float64 if dt == torch.float64 else torch.float32
    W = difference_perception_weight(dehazed.to(cdt) - clear.to(cdt), eps)
    Dp, Dt = depth_pred.to(cdt), depth_target.to(cdt)
    return F.l1_loss(W * Dp, W * Dt) + F.l1_loss(Dp, Dt)
