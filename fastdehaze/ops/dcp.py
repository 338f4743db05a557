"""Dark channel prior ops (SPEC section 2): dark/bright channel, atmospheric light,
transmission and the whole DCP dehazing pipeline.

From He, Sun, Tang, "Single Image Haze Removal Using Dark Channel Prior" (CVPR 2009 / TPAMI
2011), with the transmission refined by the guided filter of He, Sun, Tang, "Guided Image
Filtering" (ECCV 2010 / TPAMI 2013). Images are NCHW floating tensors, values in [0, 1]; half
inputs are computed in float32 and returned in their dtype, float64 in float64. Outputs are
contiguous NCHW (a channels_last or strided input is read through a copy).

Backends: "reference" (fastdehaze.reference.dcp), "cpu" (C++), "cuda" (CUDA C++), "triton".
Window filters run in O(1) per pixel whatever the patch (van Herk / Gil-Werman running
min/max, rows then columns). Autocast: these ops are in none of autocast's lists; they run in
the dtype of their image argument.

Determinism (Triton backend): the forwards are bitwise the same on every run
(atmospheric_light's radix select adds int32 counts, exact in any order, and its pixel sums are
per-block partials summed by torch). The dark/bright channel backward adds each output's
gradient to its input with torch's ``scatter_add_``: on CUDA this uses float atomics (ties send
several outputs to one input), unless ``torch.use_deterministic_algorithms(True)``, under which
torch runs its deterministic scatter.
"""
from __future__ import annotations

import math

import torch

from ..reference import dcp as _ref
from . import _checks
from ._dispatch import FusedOp, as_bc, compute_dtype, resolve_backend

__all__ = ["dark_channel", "bright_channel", "atmospheric_light", "transmission", "dehaze_dcp"]

FAMILY = "dcp"
A_MIN = _ref.A_MIN


try:  # imported at import (never inside a torch.compile trace); triton is optional
    from ..kernels import dcp as _kernels
except Exception:
    _kernels = None


def _triton():
    if _kernels is None:
        from ..kernels import dcp as k  # raises the ImportError that marks Triton unavailable
        return k
    return _kernels


# ---- dark / bright channel ----------------------------------------------------------------------

def _channel_fake(I, patch):
    return I.new_empty((I.shape[0], 1, I.shape[2], I.shape[3]))


def _channel_backward_fake(grad, I, patch):
    return I.new_empty(I.shape)


def _channel_setup(ctx, inputs, output):
    I, patch = inputs
    ctx.save_for_backward(I)
    ctx.patch = patch


def _channel_backward(ctx, backward_op, grad):
    (I,) = ctx.saved_tensors
    return backward_op(grad, I, ctx.patch), None


def _make_channel_op(name, is_max):
    return FusedOp(
        name, FAMILY, "(Tensor I, int patch) -> Tensor",
        fake=_channel_fake,
        triton_impl=lambda I, patch: _triton().channel_window(I, patch, is_max),
        backward_schema="(Tensor grad, Tensor I, int patch) -> Tensor",
        backward_fake=_channel_backward_fake,
        triton_backward_impl=lambda grad, I, patch: _triton().channel_window_backward(grad, I, patch, is_max),
        setup_context=_channel_setup, backward=_channel_backward)


_dark_channel = _make_channel_op("dark_channel", False)
_bright_channel = _make_channel_op("bright_channel", True)


def _check_patch(patch, name="patch"):
    patch = _checks.integer(patch, name)
    if patch <= 0 or patch % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer, got {patch}")
    return patch


def dark_channel(I, patch=15, *, backend="auto"):
    """Dark channel of He et al. (CVPR 2009, eq. 5): min over channels, then over the
    ``patch`` x ``patch`` window centred on each pixel.

    The window is clipped at the image border (pixels outside do not take part: +inf padding);
    a patch larger than the image is fine. Cost is O(1) per pixel whatever the patch (van Herk /
    Gil-Werman running min, rows then columns). A NaN anywhere in the window gives NaN.

    Args:
        I: image [B,C,H,W], float16/bfloat16/float32/float64, values usually in [0, 1].
        patch: window side, a positive odd integer (default 15).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        [B,1,H,W] in I's dtype. Differentiable: each output passes its whole gradient to one
        input element, the minimum met first scanning the window row-major and, within a pixel,
        the lowest channel (NaN counts as the minimum).

    Raises:
        TypeError: I is not a floating tensor; patch is not an int.
        ValueError: I is not 4-D; patch is even or <= 0.
        RuntimeError: the requested backend is unavailable for I's device.
    """
    return _channel(I, patch, backend, False)


def bright_channel(I, patch=15, *, backend="auto"):
    """Bright channel: max over channels, then over the ``patch`` x ``patch`` window clipped
    at the border (-inf padding). Same arguments, errors and gradient rule as
    :func:`dark_channel`, with max for min (the maximum met first row-major, lowest channel)."""
    return _channel(I, patch, backend, True)


def _channel(I, patch, backend, is_max):
    _checks.image(I, "I")
    patch = _checks.window_patch(_check_patch(patch), *I.shape[2:])
    b = resolve_backend(backend, FAMILY, I.device)
    if b == "reference":
        return (_ref.bright_channel if is_max else _ref.dark_channel)(I, patch)
    return (_bright_channel if is_max else _dark_channel)(b, I, patch)


# ---- atmospheric light --------------------------------------------------------------------------

def _atmo_fake(I, dark, k):
    return I.new_empty((I.shape[0], I.shape[1]), dtype=compute_dtype(I.dtype))


_atmospheric_light = FusedOp(
    "atmospheric_light", FAMILY, "(Tensor I, Tensor dark, int k) -> Tensor",
    fake=_atmo_fake)


def atmospheric_light(I, dark=None, top=0.001, patch=15, *, backend="auto"):
    """Atmospheric light A of DCP: the per-channel mean of I over the k = max(1, floor(top*H*W))
    pixels with the largest dark-channel value.

    Ties are broken by the lower flat index (as a stable descending sort) and a NaN dark value
    ranks as the largest. He et al. (CVPR 2009, sec. 4.4) take the brightest I among those
    pixels; most public DCP code takes their mean: we take the mean. The fused backends select
    by radix select (O(H W), no sort). Not differentiable (the output does not require grad).

    Args:
        I: image [B,C,H,W], floating, values in [0, 1].
        dark: its dark channel [B,1,H,W] (computed with ``patch`` when None).
        top: fraction of the pixels to average, in [0, 1] (default 0.001, i.e. 0.1%).
        patch: window of the dark channel when ``dark`` is None (positive odd int).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        A [B,C,1,1] in I's dtype.

    Raises:
        TypeError: non-floating I/dark, a non-number top, a non-int patch.
        ValueError: bad shapes, top outside [0, 1], bad patch.
    """
    _checks.image(I, "I")
    patch = _checks.window_patch(_check_patch(patch), *I.shape[2:])
    if isinstance(top, bool) or not isinstance(top, (int, float)):
        raise TypeError(f"top must be a float, got {type(top).__name__}")
    if not 0.0 <= top <= 1.0:
        raise ValueError(f"top must be in [0, 1], got {top}")
    if dark is not None:
        _checks.map_like(dark, "dark", I, "I", allow_channels=(1,))
        if dark.shape[1] != 1:
            raise ValueError(f"dark must be [B,1,H,W], got {tuple(dark.shape)}")
    b = resolve_backend(backend, FAMILY, I.device)
    if b == "reference":
        return _ref.atmospheric_light(I, dark, top, patch)
    B, C, H, W = I.shape
    I = I.detach()
    if dark is None:
        dark = _dark_channel(b, I, patch)
    k = _ref.top_k_count(H, W, top)
    A = _atmospheric_light(b, I, dark.detach().to(I.dtype), k)
    return A.reshape(B, C, 1, 1).to(I.dtype)


# ---- transmission -------------------------------------------------------------------------------

def _trans_fake(I, A, omega, patch):
    return I.new_empty((I.shape[0], 1, I.shape[2], I.shape[3]))


_transmission = FusedOp(
    "transmission", FAMILY, "(Tensor I, Tensor A, float omega, int patch) -> Tensor",
    fake=_trans_fake)


def transmission(I, A, omega=0.95, patch=15, *, backend="auto"):
    """Coarse DCP transmission t~ = 1 - omega * dark_channel(I / A) (He et al., CVPR 2009, eq. 12).

    Fused: the fused backends scale by 1/A inside the channel min (no I / A temporary).
    Guard: each channel of A is clamped to at least ``A_MIN`` = 1e-6 before dividing, so an
    all-black image or A = 0 gives finite values (I = 0 over A = 0 gives t = 1; I > 0 gives a
    large negative t~ that the DCP pipeline clamps to t0). Not differentiable.

    Args:
        I: hazy image [B,C,H,W], floating, values in [0, 1].
        A: atmospheric light: a float, a 0-d tensor, [B,1,1,1], [B,C,1,1] or [1,C,1,1].
        omega: haze kept for depth perception, in [0, 1] (default 0.95).
        patch: window side, positive odd int (default 15).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        t~ [B,1,H,W] in I's dtype (<= 1; may be negative where I > A).

    Raises:
        TypeError / ValueError: bad I, A, omega or patch (the message names the argument).
    """
    _checks.image(I, "I")
    patch = _checks.window_patch(_check_patch(patch), *I.shape[2:])
    if isinstance(omega, bool) or not isinstance(omega, (int, float)):
        raise TypeError(f"omega must be a float, got {type(omega).__name__}")
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega must be in [0, 1], got {omega}")
    b = resolve_backend(backend, FAMILY, I.device)
    B, C = I.shape[:2]
    A_bc = as_bc(A, "A", B, C, compute_dtype(I.dtype), I.device).detach()
    if b == "reference":
        return _ref.transmission(I, A_bc.reshape(B, C, 1, 1), omega, patch)
    return _transmission(b, I.detach(), A_bc, float(omega), patch)


# ---- the whole pipeline -------------------------------------------------------------------------

def _dehaze_fake(I, patch, omega, top, r, eps, t0):
    B, C, H, W = I.shape
    return I.new_empty(I.shape), I.new_empty((B, 1, H, W)), I.new_empty((B, C), dtype=compute_dtype(I.dtype))


# Registered at import: a registration inside the op's call path is a graph break that makes
# torch.compile(fullgraph=True) fail on the first call of a process.
if _dark_channel.native is not None:
    torch.library.register_fake("fastdehaze::dehaze_dcp")(_dehaze_fake)


def _native_dehaze():
    return torch.ops.fastdehaze.dehaze_dcp.default


def _guided_filter(guide, src, r, eps, backend):
    try:
        from .filters import guided_filter as gf  # the filters family's op (same package)
    except ImportError:
        gf = None
    if gf is not None:
        return gf(guide, src, r, eps, backend=backend)
    return _ref.guided_filter(guide, src, r, eps)


def dehaze_dcp(I, patch=15, omega=0.95, top=0.001, r=60, eps=1e-3, t0=0.1, return_all=False, *, backend="auto"):
    """Dark-channel-prior dehazing (He, Sun, Tang, CVPR 2009 / TPAMI 2011) with guided-filter
    refinement of the transmission (He, Sun, Tang, ECCV 2010).

    dark channel -> A (mean of I over the top ``top`` fraction of the dark channel) ->
    t~ = 1 - omega dark(I / A) -> guided filter of t~ with the BT.601 luma guide (radius r,
    eps) -> t clamped to [t0, 1] -> J = (I - A) / t + A clamped to [0, 1]. On the CPU the whole
    pipeline is one fused C++ op (single-channel maps in float32, or float64 for float64
    input); on CUDA/Triton it chains this family's ops, the filters family's guided filter and
    ``recover``. Not differentiable. Images with C != 3 use the channel mean as guide.
    Memory: the fused CPU op keeps its scratch (3 H W values of the compute type, 58 MB for a
    4.9 MP float32 photo) per calling thread between calls, up to 256 MiB, so that a loop over
    photos does not pay the page faults again; larger images use a temporary buffer.

    Args:
        I: hazy image [B,C,H,W], floating, values in [0, 1] (sRGB as stored).
        patch: dark-channel window (positive odd int, default 15).
        omega: default 0.95, in [0, 1].  top: fraction for A, default 0.001, in [0, 1].
        r: guided-filter radius (int >= 0, default 60).  eps: its regulariser (> 0, default 1e-3).
        t0: lower bound of the transmission, in (0, 1] (default 0.1).
        return_all: also return t [B,1,H,W] and A [B,C,1,1].
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        J [B,C,H,W] in I's dtype, or (J, t, A) with ``return_all``.

    Raises:
        TypeError / ValueError: a bad argument (the message names it).
        RuntimeError: the requested backend is unavailable for I's device.
    """
    _checks.image(I, "I")
    patch = _checks.window_patch(_check_patch(patch), *I.shape[2:])
    for name, v, lo, hi in (("omega", omega, 0.0, 1.0), ("top", top, 0.0, 1.0), ("t0", t0, 0.0, 1.0),
                            ("eps", eps, 0.0, math.inf)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    if t0 <= 0:
        raise ValueError(f"t0 must be > 0, got {t0}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    r = _checks.integer(r, "r")
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    r = _checks.window_radius(r, *I.shape[2:])
    if not isinstance(return_all, bool):
        raise TypeError(f"return_all must be a bool, got {type(return_all).__name__}")
    b = resolve_backend(backend, FAMILY, I.device)
    I = I.detach()
    if b == "reference":
        return _ref.dehaze_dcp(I, patch, omega, top, r, eps, t0, return_all)
    B, C, H, W = I.shape
    if b == "cpu":
        J, t, A = _native_dehaze()(I, patch, float(omega), float(top), r, float(eps), float(t0))
    else:
        from .asm import recover
        cdt = compute_dtype(I.dtype)
        dark = _dark_channel(b, I, patch)
        A = _atmospheric_light(b, I, dark, _ref.top_k_count(H, W, top))
        t_raw = _transmission(b, I, A, float(omega), patch).to(cdt)
        guide = _ref.luma(I.to(cdt))
        t = torch.clamp(_guided_filter(guide, t_raw, r, float(eps), b), t0, 1.0)
        J = recover(I, t.to(I.dtype), A.reshape(B, C, 1, 1), t0, clamp=(0.0, 1.0), backend=b)
        t = t.to(I.dtype)
    A = A.reshape(B, C, 1, 1).to(I.dtype)
    return (J, t, A) if return_all else J
