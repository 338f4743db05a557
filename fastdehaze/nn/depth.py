"""Depth-difference losses and attention (DCMPNet, CVPR 2024; SPEC section 5), built on
``fastdehaze.ops.depth_difference_loss`` / ``difference_perception_weight``.

* :class:`DifferencePerceptionLoss`: DCMPNet's depth loss ``loss_total_depth`` of ``train.py``,
  the same numbers for the same input tensors (DCMPNet's images are in [-1, 1]; the softmax
  depends on that scale, so pass the tensors as the training code has them).
* :class:`DCMPNetLoss`: the dehazing and depth losses of DCMPNet from the networks' outputs.
* :class:`DepthDifferenceAttention`: our extension: F * resize(W(x - y)) with normalised weights.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.depth_difference import depth_difference_loss, difference_perception_weight

__all__ = ["DifferencePerceptionLoss", "DCMPNetLoss", "DCMPNetLosses", "DepthDifferenceAttention"]


class DifferencePerceptionLoss(nn.Module):
    """DCMPNet's difference-perception depth loss (``train.py``, ``loss_total_depth``).

        W       = sum_c (softmax over C*H*W of (dehazed - clear), per image + eps)
        L_depth = L1(W * depth_pred, W * depth_target) + L1(depth_pred, depth_target)

    W is not detached: the gradient reaches ``dehazed`` through the softmax, as in DCMPNet.

    Args:
        eps: DCMPNet's 1e-7.
        backend: passed to :func:`fastdehaze.ops.depth_difference_loss`.

    Shapes: dehazed, clear [B,C,H,W]; depth_pred, depth_target [B,1,H,W]; returns a 0-d
    float32 tensor (float64 for float64 inputs). Errors as the op.
    """

    def __init__(self, eps: float = 1e-7, backend: str = "auto"):
        super().__init__()
        self.eps = eps
        self.backend = backend

    def forward(self, dehazed, clear, depth_pred, depth_target):
        return depth_difference_loss(dehazed, clear, depth_pred, depth_target, self.eps, backend=self.backend)


class DCMPNetLosses(NamedTuple):
    """The two losses of DCMPNet's training step; DCMPNet back-propagates their sum."""
    dehaze: torch.Tensor
    depth: torch.Tensor


class DCMPNetLoss(nn.Module):
    """DCMPNet's dehazing and depth losses (``train.py``) from the networks' outputs.

        dehaze = L1(J^, J) + depth_weight * L1(D^, D) + contrast_weight * CR(J^, J, I)
        depth  = L1(W * D^, W * D) + L1(D^, D)          (DifferencePerceptionLoss)

    with J^ the dehazed output, J the ground truth, I the hazy input, D^ the depth network's
    output on J^ and D the teacher's depth of J. Weights (DCMPNet's): depth_weight = 0.1,
    contrast_weight = 1. DCMPNet's total dehazing loss also has three L1 terms between the
    features of an auxiliary UNet on J and on I (``loss_dehaze_u1..u3``); they need that network
    and are not part of this module: add them to ``dehaze`` if you train it.

    Args:
        contrast_loss: the contrastive term, called as ``contrast_loss(J^, J, I)`` (anchor,
            positive, negative; AECR-Net's/DCMPNet's ``ContrastLoss`` convention). Default:
            ``fastdehaze.nn.ContrastLoss()`` (VGG19 features; see its docstring for weights).
            Required unless ``contrast_weight`` is 0.
        depth_weight: weight of L1(D^, D) in the dehazing loss (0.1).
        contrast_weight: weight of the contrastive term (1.0).
        eps: the softmax eps of the depth loss (1e-7).
        backend: passed to the fused depth loss.

    Returns:
        :class:`DCMPNetLosses` (dehaze, depth), 0-d tensors.

    Raises:
        RuntimeError: no ``contrast_loss`` given, ``contrast_weight`` != 0, and
            ``fastdehaze.nn.ContrastLoss`` is not available.
    """

    def __init__(self, contrast_loss: Optional[Callable] = None, depth_weight: float = 0.1,
                 contrast_weight: float = 1.0, eps: float = 1e-7, backend: str = "auto"):
        super().__init__()
        if contrast_loss is None and contrast_weight != 0:
            try:
                from .losses import ContrastLoss  # built by the contrastive family
            except ImportError as e:
                raise RuntimeError("DCMPNetLoss: fastdehaze.nn.ContrastLoss is not available "
                                   f"({e}); pass contrast_loss= or contrast_weight=0") from None
            contrast_loss = ContrastLoss()
        self.contrast_loss = contrast_loss
        self.depth_weight = float(depth_weight)
        self.contrast_weight = float(contrast_weight)
        self.depth_loss = DifferencePerceptionLoss(eps, backend)

    def forward(self, dehazed, clear, hazy, depth_pred, depth_target) -> DCMPNetLosses:
        dehaze = F.l1_loss(dehazed, clear) + self.depth_weight * F.l1_loss(depth_pred, depth_target)
        if self.contrast_weight != 0:
            dehaze = dehaze + self.contrast_weight * self.contrast_loss(dehazed, clear, hazy)
        return DCMPNetLosses(dehaze, self.depth_loss(dehazed, clear, depth_pred, depth_target))


class DepthDifferenceAttention(nn.Module):
    """Feature attention from a difference perception weight (our extension of DCMPNet's
    difference perception, SPEC section 5):

        out = feat * resize(W(x - y)),    W = H*W * sum_c softmax(x - y)   (normalize=True)

    The weight has mean 1 per image at any resolution, so features keep their scale on average
    and are amplified where x and y differ most. Any pair of estimates available at that point
    works: the output and the ground truth in training, or a first estimate (e.g. a PRM's) and
    the refined output at inference.

    Args:
        mode: interpolation mode of the resize to feat's size ("bilinear" default, or "area",
            "nearest", ...); no resize when the sizes match.
        detach: stop the gradient into x and y (default False).
        backend: passed to :func:`fastdehaze.ops.difference_perception_weight`.

    Shapes: x, y [B,C,H,W] (same shape); feat [B,K,h,w]; returns [B,K,h,w] in feat's dtype.

    Raises:
        ValueError: x and y of different shapes, or a batch size of feat that differs.
    """

    def __init__(self, mode: str = "bilinear", detach: bool = False, backend: str = "auto"):
        super().__init__()
        self.mode = mode
        self.detach = detach
        self.backend = backend

    def forward(self, x, y, feat):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or not isinstance(feat, torch.Tensor):
            raise TypeError("x, y and feat must be tensors")
        if x.shape != y.shape:
            raise ValueError(f"y must have the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
        if feat.dim() != 4 or feat.shape[0] != x.shape[0]:
            raise ValueError(f"feat must be [B,K,h,w] with B={x.shape[0]}, got {tuple(feat.shape)}")
        diff = x - y
        if self.detach:
            diff = diff.detach()
        W = difference_perception_weight(diff, normalize=True, backend=self.backend)
        if W.shape[-2:] != feat.shape[-2:]:
            kw = {"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}
            W = F.interpolate(W, size=feat.shape[-2:], mode=self.mode, **kw)
        return feat * W.to(feat.dtype)
