"""Box filter and guided filter (SPEC section 2).

* :func:`box_filter`: border-normalised (2r+1) x (2r+1) box mean, O(1) per pixel (running sums
  in float64 per row and column in the C++/CUDA kernels, float64 prefix sums per line in the
  Triton kernels), so a constant image stays constant to rounding for any r, also r >= H, W.
* :func:`guided_filter`: He, Sun, Tang, "Guided Image Filtering" (ECCV 2010 / TPAMI 2013),
  gray or colour guide, and the fast guided filter (He & Sun, arXiv:1505.00996, 2015) with
  ``subsample > 1``.

Images are NCHW floating tensors; half inputs are computed in float32 and returned in their
dtype, float64 in float64. Outputs are contiguous NCHW (channels_last or strided inputs are read
through a copy). Autocast: these ops are not in autocast's lists; they run in the dtype of their
input (``src`` for the guided filter).

Determinism (Triton backend): bitwise the same on every run (per-line prefix sums, no atomics).
"""
from __future__ import annotations

import torch

from ..reference import filters as _ref
from . import _checks
from ._dispatch import FusedOp, resolve_backend

__all__ = ["box_filter", "guided_filter"]

FAMILY = "filters"


def _radius(r, name="r"):
    r = _checks.integer(r, name)
    if r < 0:
        raise ValueError(f"{name} must be >= 0, got {r}")
    return r


# ---- box_filter -------------------------------------------------------------------------------

def _box_fake(x, r):
    return x.new_empty(x.shape)


def _box_backward_fake(grad, r):
    return grad.new_empty(grad.shape)


def _box_setup(ctx, inputs, output):
    ctx.r = inputs[1]


def _box_backward(ctx, backward_op, grad):
    return backward_op(grad, ctx.r), None


_box = FusedOp(
    "box_filter", FAMILY, "(Tensor x, int r) -> Tensor",
    fake=_box_fake,
    backward_schema="(Tensor grad, int r) -> Tensor",
    backward_fake=_box_backward_fake,
    setup_context=_box_setup, backward=_box_backward)


def box_filter(x, r, *, backend="auto"):
    """Border-normalised box mean over (2r+1) x (2r+1) windows.

        y[b,c,i,j] = mean of x[b,c,k,l] over |k-i| <= r, |l-j| <= r, 0 <= k < H, 0 <= l < W

    The window is clipped at the border and the sum divided by the number of pixels inside it,
    so a constant image stays constant (to rounding) for every r, including r >= H, W. Cost is
    O(1) per pixel (separable running sums accumulated in float64 per row and column). Used by
    the guided filter (He et al., ECCV 2010, Alg. 1 ``f_mean``).

    Args:
        x: [B,C,H,W], float16/bfloat16/float32/float64 (any values; images in [0, 1]).
        r: window radius in pixels, an int >= 0; ``r = 0`` returns a (contiguous) copy of ``x``,
            never ``x`` itself (an output aliasing its input breaks custom-op and in-place users).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        [B,C,H,W] in x's dtype. A NaN or +-inf inside a window gives NaN at that output (our
        choice; other outputs are unaffected). Differentiable: the gradient is the adjoint, a box
        sum of ``grad / count`` (registered op ``box_filter_backward``); no double backward.

    Raises:
        TypeError: x not a floating tensor, r not an int.
        ValueError: x not 4-d, r < 0.
        RuntimeError: the requested backend is unavailable for x's device.
    """
    _checks.image(x, "x")
    r = _checks.window_radius(_radius(r), x.shape[2], x.shape[3])
    b = resolve_backend(backend, FAMILY, x.device)
    if r == 0:
        return x.clone(memory_format=torch.contiguous_format)
    if b == "reference":
        return _ref.box_filter(x, r)
    return _box(b, x, r)


# ---- guided_filter ----------------------------------------------------------------------------

def _gf_fake(I, p, r, eps):
    return p.new_empty(p.shape)


_gf = FusedOp(
    "guided_filter", FAMILY, "(Tensor I, Tensor p, int r, float eps) -> Tensor",
    fake=_gf_fake)


def guided_filter(guide, src, r=60, eps=1e-3, subsample=1, *, backend="auto"):
    """Edge-preserving guided filter of ``src`` guided by ``guide`` (He et al. 2010/2013).

    Gray guide I (1 channel), per src channel p (He et al., TPAMI 2013, Alg. 1)::

        a = cov(I, p) / (var(I) + eps),   b = mean(p) - a mean(I),   q = mean(a) I + mean(b)

    Colour guide (3 channels): a = (Sigma + eps U)^-1 cov(I, p) per pixel (3x3 symmetric
    system solved by its adjugate, in float32 for half inputs), b = mean(p) - a . mean(I),
    q = mean(a) . I + mean(b). Every mean is :func:`box_filter` with radius r (window clipped at
    the border). A gray guide repeated on 3 channels with eps gives the gray filter with eps/3.

    ``subsample = s > 1`` is the fast guided filter (He & Sun, arXiv:1505.00996): guide and src
    are subsampled by taking every s-th pixel (``x[..., ::s, ::s]``, nearest, as He's
    ``imresize(., 1/s, 'nearest')``), the coefficients mean(a), mean(b) are computed there with
    radius ``max(1, round(r / s))``, upsampled to H x W with ``F.interpolate(mode="bilinear",
    align_corners=False)`` and applied to the full-resolution guide.

    Args:
        guide: I, [B,1,H,W] or [B,3,H,W], floating (cast to src's dtype), values in [0, 1].
        src: p, [B,C,H,W] (any C), floating; the output has its dtype.
        r: box radius in pixels, int >= 0 (DCP uses 60 on full-size photos).
        eps: regularisation, float > 0, in squared intensity units (1e-3 for DCP).
        subsample: int >= 1 (1 = the plain guided filter).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        q [B,C,H,W], src's dtype (computed in float32 for half inputs, float64 for float64).
        NaN/inf in a window propagates as the box filter's (NaN).

    Gradients: w.r.t. src and guide. When a gradient is needed (or ``subsample > 1``) the fused
    backends run the same formula composed of their fused box filters (each differentiable by
    its adjoint) and PyTorch element-wise ops; otherwise one fused kernel
    (``fastdehaze::guided_filter``, no autograd of its own) computes q: on the CPU the four box
    filters of mean I, mean p, mean Ip, mean II run in one pass with float64 running sums, then
    the two of a and b in a second pass.

    Raises:
        TypeError: a non-tensor or non-floating guide/src, r/subsample not an int, eps not a float.
        ValueError: wrong ndim, guide not 1 or 3 channels, B/H/W mismatch, different devices,
            r < 0, eps <= 0, subsample < 1.
        RuntimeError: the requested backend is unavailable for the tensors' device.
    """
    _checks.image(guide, "guide")
    _checks.image(src, "src")
    if guide.shape[1] not in (1, 3):
        raise ValueError(f"guide must have 1 (gray) or 3 (colour) channels, got shape {tuple(guide.shape)}")
    _checks.same_device("guide", guide, "src", src)
    if guide.shape[0] != src.shape[0] or guide.shape[2:] != src.shape[2:]:
        raise ValueError(f"guide {tuple(guide.shape)} and src {tuple(src.shape)} must have the same B, H, W")
    r = _checks.window_radius(_radius(r), src.shape[2], src.shape[3])
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    subsample = _radius(subsample, "subsample")
    if subsample < 1:
        raise ValueError(f"subsample must be >= 1, got {subsample}")
    b = resolve_backend(backend, FAMILY, src.device)
    if b == "reference":
        return _ref.guided_filter(guide, src, r, float(eps), subsample)
    needs_grad = torch.is_grad_enabled() and (guide.requires_grad or src.requires_grad)
    if subsample == 1 and not needs_grad:
        return _gf(b, guide.to(src.dtype), src, r, float(eps))

    def box(x, rr):
        return box_filter(x, rr, backend=b)

    return _ref.guided_filter(guide, src, r, float(eps), subsample, box=box)
