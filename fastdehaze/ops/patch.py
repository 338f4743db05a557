"""Patch brightness ranking and patch gathering for intra-image contrastive learning (SPEC section 3).

IICL (progressive dehazing with inter and intra contrastive learning, ICASSP 2023; only the
abstract is public) uses the brightest and the darkest patches of an image as contrastive
samples. The ranking below is this project's design (see ``fastdehaze.reference.patch``):
patches fully inside the image on a stride grid, scored by their mean brightness, ranked by a
stable sort. The ranking is done on the hazy input, and :func:`gather_patches` cuts the same
corners from the output, the clear image and the hazy input.

Fused kernels (C++ CPU, CUDA C++, Triton): the image is read once (for ``stride < patch`` the
rows shared by overlapping patch rows are read again, from cache, on CUDA/Triton), the per-pixel
brightness is reduced to patch sums without an unfold, then a small per-image selection picks
the k first patches of each order. Autocast: these ops are not in autocast's lists; half
inputs are scored in float32.

Determinism (Triton backend): bitwise the same on every run (no atomics; the gather backward
sums the covering patches per pixel in patch order).
"""
from __future__ import annotations

import torch

from ..reference import patch as _ref
from ..reference.patch import MEASURES, PatchRank
from . import _checks
from ._dispatch import FusedOp, compute_dtype, resolve_backend

__all__ = ["patch_brightness_rank", "gather_patches", "PatchRank"]

FAMILY = "patch"

#: measure name -> the int code of the registered ops (luma of a 1-channel image is "mean").
MEASURE_CODES = {"luma": 0, "mean": 1, "dark": 2, "max": 3}


# ---- patch_brightness_rank ----------------------------------------------------------------------

def _rank_fake(x, patch, stride, k, measure):
    B = x.shape[0]
    sdt = compute_dtype(x.dtype)
    idx = x.new_empty((B, k), dtype=torch.int64)
    sc = x.new_empty((B, k), dtype=sdt)
    cor = x.new_empty((B, k, 2), dtype=torch.int64)
    return idx, sc, cor, idx.new_empty((B, k)), sc.new_empty((B, k)), cor.new_empty((B, k, 2))


_rank = FusedOp(
    "patch_brightness_rank", FAMILY,
    "(Tensor x, int patch, int stride, int k, int measure) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    fake=_rank_fake)


def _int_arg(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def patch_brightness_rank(x, patch=32, stride=None, k=4, measure="luma", *, backend="auto") -> PatchRank:
    """Rank the patches of each image by mean brightness: the k brightest and the k darkest.

    The patches are the ``patch x patch`` windows fully inside the image with top-left corners
    at multiples of ``stride``: an ``nH x nW`` grid with ``nH = (H - patch) // stride + 1`` and
    ``nW = (W - patch) // stride + 1`` (a remainder at the bottom/right is not scored). A
    patch's score is the mean of the brightness map over it. Bright order = a stable
    descending sort of the scores, NaN first (as the largest); dark order = a stable
    ascending sort, NaN last; ties keep the lower grid index first (``torch.sort(...,
    stable=True)`` semantics, not ``torch.topk``'s). This ranking is our design for IICL
    (ICASSP 2023, whose abstract only says the brightest and darkest patches are used).

    Args:
        x: image [B,C,H,W], float16/bfloat16/float32/float64, values in [0, 1] (any layout:
            channels_last or strided inputs are read through a contiguous copy).
        patch: patch side in pixels, 1 <= patch <= min(H, W) (default 32).
        stride: grid step in pixels (default ``patch``: non-overlapping patches), >= 1.
        k: number of patches returned per order, 0 <= k <= nH * nW (0 gives empty results).
        measure: the brightness map: ``"luma"`` (BT.601 0.299 R + 0.587 G + 0.114 B; needs 3
            channels, or 1 channel, which is then its own luma), ``"mean"`` over channels,
            ``"dark"`` (channel min, as the dark channel prior's per-pixel min), ``"max"``
            (channel max). min/max propagate NaN.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        :class:`PatchRank` (a NamedTuple): ``bright_index``, ``bright_score``,
        ``bright_corner``, ``dark_index``, ``dark_score``, ``dark_corner``. Indices [B,k]
        int64 (row-major in the nH x nW grid); scores [B,k], float32 for half/float32 inputs,
        float64 for float64 (the fused backends accumulate the patch sums in float64 on the CPU
        and in the score dtype on CUDA/Triton); corners [B,k,2] int64 (y, x) of the top-left
        pixel, ``(index // nW * stride, index % nW * stride)``. Nothing is differentiable: the
        ranking is a selection, and the scores are returned without gradient (detached).

    Raises:
        TypeError: x not a floating tensor; patch/stride/k not ints; measure not a str.
        ValueError: x not 4-D; patch < 1 or patch > H or W; stride < 1; k < 0 or
            k > nH * nW; an unknown measure, or "luma" on an image with neither 1 nor 3
            channels.
        RuntimeError: the requested backend is unavailable for x's device.
    """
    _checks.image(x, "x")
    patch = _int_arg(patch, "patch")
    stride = patch if stride is None else _int_arg(stride, "stride")
    k = _int_arg(k, "k")
    if not isinstance(measure, str):
        raise TypeError(f"measure must be a str, one of {MEASURES}, got {type(measure).__name__}")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    B, C, H, W = x.shape
    if measure == "luma" and C not in (1, 3):
        raise ValueError(f"measure='luma' needs an image with 3 (RGB) or 1 channels, got x of shape {tuple(x.shape)}")
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    if patch > H or patch > W:
        raise ValueError(f"patch ({patch}) must not exceed the image's height and width, got x of shape {tuple(x.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    nH, nW = _ref.grid_shape(H, W, patch, stride)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > nH * nW:
        raise ValueError(f"k ({k}) must not exceed the number of patches nH*nW = {nH}*{nW} = {nH * nW} "
                         f"(patch {patch}, stride {stride}, image {H}x{W})")
    b = resolve_backend(backend, FAMILY, x.device)
    x = x.detach()
    if b == "reference":
        return _ref.patch_brightness_rank(x, patch, stride, k, measure)
    code = MEASURE_CODES[measure] if not (measure == "luma" and C == 1) else MEASURE_CODES["mean"]
    return PatchRank(*_rank(b, x, patch, stride, k, code))


# ---- gather_patches -----------------------------------------------------------------------------

def _gather_fake(x, corners, patch):
    return x.new_empty((x.shape[0], corners.shape[1], x.shape[1], patch, patch))


def _gather_backward_fake(grad, corners, H, W):
    return grad.new_empty((grad.shape[0], grad.shape[2], H, W))


def _gather_setup(ctx, inputs, output):
    x, corners, patch = inputs
    ctx.save_for_backward(corners)
    ctx.hw = (x.shape[2], x.shape[3])


def _gather_backward(ctx, backward_op, grad):
    (corners,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None
    return backward_op(grad, corners, *ctx.hw), None, None


_gather = FusedOp(
    "gather_patches", FAMILY,
    "(Tensor x, Tensor corners, int patch) -> Tensor",
    fake=_gather_fake,
    backward_schema="(Tensor grad, Tensor corners, SymInt H, SymInt W) -> Tensor",
    backward_fake=_gather_backward_fake,
    setup_context=_gather_setup, backward=_gather_backward)


def gather_patches(x, corners, patch, *, backend="auto"):
    """Cut ``patch x patch`` windows at given corners: ``out[b, q] = x[b, :, y:y+patch, x:x+patch]``.

    Used with the corners of :func:`patch_brightness_rank` to cut the same patches from the
    network output (anchor), the clear image (positive) and the hazy input (negative) for IICL's
    intra-image contrastive loss (ICASSP 2023; SPEC section 3).

    Args:
        x: image [B,C,H,W], float16/bfloat16/float32/float64 (any layout).
        corners: [B,k,2] integer tensor (int64; other integer dtypes are converted) of (y, x)
            top-left corners, on x's device, with 0 <= y <= H - patch and 0 <= x <= W - patch.
        patch: patch side in pixels, 1 <= patch <= min(H, W).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        [B,k,C,patch,patch] in x's dtype (contiguous). Differentiable w.r.t. x: the backward
        adds each patch's gradient back at its place (overlapping or repeated patches add up;
        half gradients are summed in float32). corners get no gradient.

    Raises:
        TypeError: x not a floating tensor; corners not an integer tensor; patch not an int.
        ValueError: x not 4-D; corners not [B,k,2] with x's B or on another device; patch < 1
            or larger than the image; a corner out of range (a value check: always on CPU
            tensors, on CUDA only with ``fastdehaze.ops.set_value_checks(True)``, as it costs a
            device-to-host sync; unchecked out-of-range corners on CUDA read zeros outside the
            image and drop their gradient there in the fused backends).
        RuntimeError: the requested backend is unavailable for x's device.
    """
    _checks.image(x, "x")
    if not isinstance(corners, torch.Tensor):
        raise TypeError(f"corners must be a torch.Tensor, got {type(corners).__name__}")
    if corners.is_floating_point() or corners.is_complex() or corners.dtype == torch.bool:
        raise TypeError(f"corners must be an integer (int64) tensor, got {corners.dtype}")
    patch = _int_arg(patch, "patch")
    B, C, H, W = x.shape
    if corners.dim() != 3 or corners.shape[0] != B or corners.shape[2] != 2:
        raise ValueError(f"corners must be [B,k,2] (y, x) with B={B}, got shape {tuple(corners.shape)}")
    _checks.same_device("corners", corners, "x", x)
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    if patch > H or patch > W:
        raise ValueError(f"patch ({patch}) must not exceed the image's height and width, got x of shape {tuple(x.shape)}")
    corners = corners.to(torch.int64)
    if corners.numel() and _checks.value_checks_enabled(corners):
        ys, xs = corners[..., 0], corners[..., 1]
        if bool(((ys < 0) | (ys > H - patch) | (xs < 0) | (xs > W - patch)).any()):
            raise ValueError(f"corners out of range: need 0 <= y <= H - patch = {H - patch} and "
                             f"0 <= x <= W - patch = {W - patch}")
    b = resolve_backend(backend, FAMILY, x.device)
    if b == "reference":
        return _ref.gather_patches(x, corners, patch)
    return _gather(b, x, corners.contiguous(), patch)
