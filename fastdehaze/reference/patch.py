"""Reference patch brightness ranking and patch gathering (SPEC section 3, IICL).

IICL ("progressive dehazing with inter and intra contrastive learning", ICASSP 2023) only says
that the brightest and darkest patches of an image serve as contrastive samples; the exact
definition below is this project's design:

* the patches are the ``patch x patch`` windows that lie fully inside the image, with top-left
  corners at multiples of ``stride`` (``nH = (H - patch) // stride + 1``, likewise ``nW``),
  numbered row-major in the ``nH x nW`` grid;
* a patch's score is the mean over the patch of a per-pixel brightness map (``measure``):
  ``"luma"`` = BT.601 ``0.299 R + 0.587 G + 0.114 B`` (3 channels; a 1-channel image is its own
  luma), ``"mean"`` over channels, ``"dark"`` = channel min, ``"max"`` = channel max (min/max
  propagate NaN, as torch.amin/amax);
* bright = ``torch.sort(scores, descending=True, stable=True)`` (NaN ranks first, as the
  largest), dark = ``torch.sort(scores, stable=True)`` (NaN ranks last); ties keep the lower
  index first. The first ``k`` of each order are returned.

The scores are computed in float32 for half/float32 inputs and in float64 for float64 inputs,
and returned in that dtype. Nothing here is differentiable except :func:`gather_patches`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

MEASURES = ("luma", "mean", "dark", "max")

#: BT.601 luma weights (R, G, B).
LUMA = (0.299, 0.587, 0.114)


class PatchRank(NamedTuple):
    """Result of ``patch_brightness_rank``: per image, the k brightest and k darkest patches in
    rank order. ``*_index`` [B,k] int64 (row-major index into the nH x nW grid), ``*_score``
    [B,k] (float32, or float64 for float64 input), ``*_corner`` [B,k,2] int64 (y, x) of the
    top-left pixel."""
    bright_index: torch.Tensor
    bright_score: torch.Tensor
    bright_corner: torch.Tensor
    dark_index: torch.Tensor
    dark_score: torch.Tensor
    dark_corner: torch.Tensor


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def grid_shape(H: int, W: int, patch: int, stride: int) -> tuple[int, int]:
    """(nH, nW): the number of patch rows and columns fully inside an H x W image."""
    return (H - patch) // stride + 1, (W - patch) // stride + 1


def brightness(x: torch.Tensor, measure: str = "luma") -> torch.Tensor:
    """Per-pixel brightness map [B,H,W] of x [B,C,H,W] in the compute dtype."""
    xc = x.to(compute_dtype(x))
    if measure == "luma":
        if xc.shape[1] == 1:
            return xc[:, 0]
        return LUMA[0] * xc[:, 0] + LUMA[1] * xc[:, 1] + LUMA[2] * xc[:, 2]
    if measure == "mean":
        return xc.mean(dim=1)
    if measure == "dark":
        return xc.amin(dim=1)
    if measure == "max":
        return xc.amax(dim=1)
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


def patch_scores(x: torch.Tensor, patch: int, stride: int, measure: str = "luma") -> torch.Tensor:
    """Mean brightness of every patch: [B, nH, nW] in the compute dtype."""
    B, _, H, W = x.shape
    nH, nW = grid_shape(H, W, patch, stride)
    if B == 0:
        return torch.empty((0, nH, nW), dtype=compute_dtype(x), device=x.device)
    m = brightness(x, measure)[:, None]
    return F.avg_pool2d(m, kernel_size=patch, stride=stride)[:, 0]


def patch_brightness_rank(x: torch.Tensor, patch: int = 32, stride: int | None = None, k: int = 4,
                          measure: str = "luma") -> PatchRank:
    """The definition of ``fastdehaze.ops.patch_brightness_rank`` (arguments assumed valid)."""
    stride = patch if stride is None else stride
    B, _, H, W = x.shape
    nH, nW = grid_shape(H, W, patch, stride)
    with torch.no_grad():
        s = patch_scores(x.detach(), patch, stride, measure).reshape(B, nH * nW)
        bv, bi = torch.sort(s, dim=1, descending=True, stable=True)
        dv, di = torch.sort(s, dim=1, descending=False, stable=True)
        bi, bv, di, dv = bi[:, :k], bv[:, :k], di[:, :k], dv[:, :k]

        def corners(idx):
            return torch.stack([(idx // nW) * stride, (idx % nW) * stride], dim=-1)

        return PatchRank(bi.contiguous(), bv.contiguous(), corners(bi), di.contiguous(), dv.contiguous(),
                         corners(di))


def gather_patches(x: torch.Tensor, corners: torch.Tensor, patch: int) -> torch.Tensor:
    """out[b, q] = x[b, :, y:y+patch, x:x+patch] with (y, x) = corners[b, q]: [B,k,C,patch,patch],
    in x's dtype; differentiable w.r.t. x (overlapping patches add up their gradients)."""
    B, C, H, W = x.shape
    k = corners.shape[1]
    ar = torch.arange(patch, device=x.device)
    ys = corners[..., 0:1].to(x.device) + ar  # [B,k,p]
    xs = corners[..., 1:2].to(x.device) + ar  # [B,k,p]
    bi = torch.arange(B, device=x.device).view(B, 1, 1, 1, 1)
    ci = torch.arange(C, device=x.device).view(1, 1, C, 1, 1)
    out = x[bi, ci, ys.view(B, k, 1, patch, 1), xs.view(B, k, 1, 1, patch)]
    return out.reshape(B, k, C, patch, patch)
