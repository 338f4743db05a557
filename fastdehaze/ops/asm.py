"""Atmospheric scattering model ops (SPEC section 1): haze synthesis, transmission, recovery.

    I(x) = J(x) t(x) + A (1 - t(x)),    t(x) = exp(-beta d(x))

Koschmieder's model as used by RESIDE (haze synthesis), DCP (He et al., CVPR 2009), AOD-Net
(Li et al., ICCV 2017) and C2PNet (CVPR 2023). Images are NCHW floating tensors, values in
[0, 1]; half inputs are computed in float32 and returned in their dtype, float64 in float64.
Outputs are contiguous NCHW (a channels_last or strided input is read through a copy).
Autocast: these element-wise ops are not in autocast's lists; they run in the dtype of their
image argument.

RESIDE presets for synthesis: indoor (ITS) A in [0.7, 1.0], beta in [0.6, 1.8]; outdoor
(OTS) A in [0.8, 1.0], beta in [0.04, 0.2] (see ``RESIDE_PRESETS``).
"""
from __future__ import annotations

import torch

from ..reference import asm as _ref_asm
from . import _checks
from ._dispatch import FusedOp, as_bc, compute_dtype, resolve_backend

__all__ = ["recover", "RESIDE_PRESETS"]

FAMILY = "asm"

#: Ranges of the RESIDE haze synthesis (Li et al., "Benchmarking Single Image Dehazing and Beyond", TIP 2019).
RESIDE_PRESETS = {
    "indoor": {"A": (0.7, 1.0), "beta": (0.6, 1.8)},
    "outdoor": {"A": (0.8, 1.0), "beta": (0.04, 0.2)},
}


def _triton():
    from ..kernels import asm as k  # imported lazily: triton is optional
    return k


# ---- recover ------------------------------------------------------------------------------------

def _recover_fake(I, t, A, t0, lo, hi, clamp):
    return I.new_empty(I.shape)


def _recover_backward_fake(grad, I, t, A, t0, lo, hi, clamp, needs_I, needs_t, needs_A):
    return (I.new_empty(I.shape if needs_I else (0,)), t.new_empty(t.shape if needs_t else (0,)),
            A.new_empty(A.shape if needs_A else (0,)))


def _recover_setup(ctx, inputs, output):
    I, t, A, t0, lo, hi, clamp = inputs
    ctx.save_for_backward(I, t, A, t0)
    ctx.args = (lo, hi, clamp)


def _recover_backward(ctx, backward_op, grad):
    I, t, A, t0 = ctx.saved_tensors
    nI, nt, nA = ctx.needs_input_grad[:3]
    gI, gt, gA = backward_op(grad, I, t, A, t0, *ctx.args, nI, nt, nA)
    return gI if nI else None, gt if nt else None, gA if nA else None, None, None, None, None


_recover = FusedOp(
    "recover", FAMILY,
    "(Tensor I, Tensor t, Tensor A, Tensor t0, float lo, float hi, bool clamp) -> Tensor",
    fake=_recover_fake,
    triton_impl=lambda *a: _triton().recover(*a),
    backward_schema="(Tensor grad, Tensor I, Tensor t, Tensor A, Tensor t0, float lo, float hi, bool clamp, "
                    "bool needs_I, bool needs_t, bool needs_A) -> (Tensor, Tensor, Tensor)",
    backward_fake=_recover_backward_fake,
    triton_backward_impl=lambda *a: _triton().recover_backward(*a),
    setup_context=_recover_setup, backward=_recover_backward)


def recover(I, t, A, t0=0.1, clamp=None, *, backend="auto"):
    """Recover the scene radiance J from a hazy image (inverse of the scattering model).

        J = (I - A) / max(t, t0) + A

    From He, Sun, Tang, "Single Image Haze Removal Using Dark Channel Prior" (CVPR 2009, eq. 22).

    Args:
        I: hazy image [B,C,H,W], float16/bfloat16/float32/float64, values in [0, 1].
        t: transmission [B,1,H,W] (shared by the channels) or [B,C,H,W], in [0, 1]; cast to
            I's dtype. NaN in t gives NaN in J (never silently replaced by t0).
        A: atmospheric light: a float, a 0-d tensor, [B,1,1,1], [B,C,1,1] or [1,C,1,1].
        t0: lower bound of t (default 0.1), same forms as A; must be > 0. Not differentiated.
        clamp: optional ``(lo, hi)`` clamp of the output (e.g. ``(0, 1)``).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        J [B,C,H,W] in I's dtype. Gradients flow to I, t (0 where t < t0, as torch.clamp) and
        A; with ``clamp``, to the elements inside [lo, hi] only.

    Raises:
        TypeError: a non-tensor or non-floating I/t/A.
        ValueError: wrong ndim, t not [B,1|C,H,W] matching I, a bad A/t0 shape, t0 <= 0,
            a bad ``clamp``.
        RuntimeError: the requested backend is unavailable for I's device.
    """
    _checks.image(I, "I")
    _checks.map_like(t, "t", I, "I")
    if not isinstance(t0, torch.Tensor) and not isinstance(t0, bool) and isinstance(t0, (int, float)) and t0 <= 0:
        raise ValueError(f"t0 must be > 0, got {t0}")
    lo, hi = _clamp_range(clamp)
    b = resolve_backend(backend, FAMILY, I.device)
    if b == "reference":
        return _ref_asm.recover(I, t, A, t0, clamp)
    B, C = I.shape[:2]
    cdt = compute_dtype(I.dtype)
    A_bc = as_bc(A, "A", B, C, cdt, I.device)
    t0_bc = as_bc(t0, "t0", B, C, cdt, I.device).detach()
    return _recover(b, I, t.to(I.dtype), A_bc, t0_bc, lo, hi, clamp is not None)


def _clamp_range(clamp):
    if clamp is None:
        return 0.0, 1.0
    try:
        lo, hi = (float(v) for v in clamp)
    except (TypeError, ValueError):
        raise ValueError(f"clamp must be None or a (lo, hi) pair of floats, got {clamp!r}") from None
    if not lo <= hi:
        raise ValueError(f"clamp must have lo <= hi, got {clamp!r}")
    return lo, hi
