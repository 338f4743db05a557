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

Determinism (Triton backend): bitwise the same on every run. The gradients of the [B, C]
parameters (A, beta, b) are per-program partial sums summed by torch in a fixed order, not
float atomics.
"""
from __future__ import annotations

import torch

from ..reference import asm as _ref_asm
from . import _checks
from ._dispatch import FusedOp, as_bc, compute_dtype, resolve_backend

__all__ = ["synthesize_haze", "transmission_from_depth", "recover", "recompose_k", "RESIDE_PRESETS"]

FAMILY = "asm"

#: Ranges of the RESIDE haze synthesis (Li et al., "Benchmarking Single Image Dehazing and Beyond", TIP 2019).
RESIDE_PRESETS = {
    "indoor": {"A": (0.7, 1.0), "beta": (0.6, 1.8)},
    "outdoor": {"A": (0.8, 1.0), "beta": (0.04, 0.2)},
}


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
    backward_schema="(Tensor grad, Tensor I, Tensor t, Tensor A, Tensor t0, float lo, float hi, bool clamp, "
                    "bool needs_I, bool needs_t, bool needs_A) -> (Tensor, Tensor, Tensor)",
    backward_fake=_recover_backward_fake,
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
    if not isinstance(t0, torch.Tensor) and not isinstance(t0, bool) and isinstance(t0, (int, float)) and not t0 > 0:
        raise ValueError(f"t0 must be > 0, got {t0}")
    if isinstance(t0, torch.Tensor) and _checks.value_checks_enabled(t0) and bool((~(t0 > 0)).any()):
        raise ValueError("t0 must be > 0 (found values <= 0 or NaN)")
    lo, hi = _clamp_range(clamp)
    b = resolve_backend(backend, FAMILY, I.device)
    B, C = I.shape[:2]
    cdt = compute_dtype(I.dtype)
    A_bc = as_bc(A, "A", B, C, cdt, I.device)
    t0_bc = as_bc(t0, "t0", B, C, cdt, I.device).detach()
    if b == "reference":
        return _ref_asm.recover(I, t, A, t0, clamp)
    return _recover(b, I, t.to(I.dtype), A_bc, t0_bc, lo, hi, clamp is not None)


# ---- synthesize_haze --------------------------------------------------------------------------

def _synthesize_fake(J, t, A):
    return J.new_empty(J.shape)


def _synthesize_backward_fake(grad, J, t, A, needs_J, needs_t, needs_A):
    return (J.new_empty(J.shape if needs_J else (0,)), t.new_empty(t.shape if needs_t else (0,)),
            A.new_empty(A.shape if needs_A else (0,)))


def _save_inputs_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _three_input_backward(ctx, backward_op, grad):
    x, m, p = ctx.saved_tensors
    nx, nm, np_ = ctx.needs_input_grad[:3]
    gx, gm, gp = backward_op(grad, x, m, p, nx, nm, np_)
    return gx if nx else None, gm if nm else None, gp if np_ else None


_synthesize = FusedOp(
    "synthesize_haze", FAMILY,
    "(Tensor J, Tensor t, Tensor A) -> Tensor",
    fake=_synthesize_fake,
    backward_schema="(Tensor grad, Tensor J, Tensor t, Tensor A, bool needs_J, bool needs_t, bool needs_A) "
                    "-> (Tensor, Tensor, Tensor)",
    backward_fake=_synthesize_backward_fake,
    setup_context=_save_inputs_setup, backward=_three_input_backward)


def _synthesize_depth_backward_fake(grad, J, depth, A, beta, needs_J, needs_depth, needs_A, needs_beta):
    return (J.new_empty(J.shape if needs_J else (0,)), depth.new_empty(depth.shape if needs_depth else (0,)),
            A.new_empty(A.shape if needs_A else (0,)), beta.new_empty(beta.shape if needs_beta else (0,)))


def _synthesize_depth_backward(ctx, backward_op, grad):
    J, depth, A, beta = ctx.saved_tensors
    needs = ctx.needs_input_grad[:4]
    grads = backward_op(grad, J, depth, A, beta, *needs)
    return tuple(g if n else None for g, n in zip(grads, needs))


# synthesize_haze with depth and beta: one pass (t is never written to memory).
_synthesize_depth = FusedOp(
    "synthesize_haze_depth", FAMILY,
    "(Tensor J, Tensor depth, Tensor A, Tensor beta) -> Tensor",
    fake=lambda J, depth, A, beta: J.new_empty(J.shape),
    backward_schema="(Tensor grad, Tensor J, Tensor depth, Tensor A, Tensor beta, bool needs_J, bool needs_depth, "
                    "bool needs_A, bool needs_beta) -> (Tensor, Tensor, Tensor, Tensor)",
    backward_fake=_synthesize_depth_backward_fake,
    setup_context=_save_inputs_setup, backward=_synthesize_depth_backward)


# ---- transmission_from_depth ------------------------------------------------------------------

def _transmission_fake(depth, beta):
    return depth.new_empty((depth.shape[0], beta.shape[1], depth.shape[2], depth.shape[3]))


def _transmission_backward_fake(grad, depth, beta, needs_depth, needs_beta):
    return depth.new_empty(depth.shape if needs_depth else (0,)), beta.new_empty(beta.shape if needs_beta else (0,))


def _transmission_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _transmission_backward(ctx, backward_op, grad):
    depth, beta = ctx.saved_tensors
    nd, nb = ctx.needs_input_grad[:2]
    gd, gb = backward_op(grad, depth, beta, nd, nb)
    return gd if nd else None, gb if nb else None


_transmission = FusedOp(
    "transmission_from_depth", FAMILY,
    "(Tensor depth, Tensor beta) -> Tensor",
    fake=_transmission_fake,
    backward_schema="(Tensor grad, Tensor depth, Tensor beta, bool needs_depth, bool needs_beta) -> (Tensor, Tensor)",
    backward_fake=_transmission_backward_fake,
    setup_context=_transmission_setup, backward=_transmission_backward)


# ---- recompose_k ------------------------------------------------------------------------------

_recompose = FusedOp(
    "recompose_k", FAMILY,
    "(Tensor I, Tensor K, Tensor b) -> Tensor",
    fake=_synthesize_fake,
    backward_schema="(Tensor grad, Tensor I, Tensor K, Tensor b, bool needs_I, bool needs_K, bool needs_b) "
                    "-> (Tensor, Tensor, Tensor)",
    backward_fake=_synthesize_backward_fake,
    setup_context=_save_inputs_setup, backward=_three_input_backward)


def _param_channels(value, name: str, C_map: int) -> int:
    """Channels of the transmission made from a C_map-channel depth and the parameter ``value``:
    C_map unless ``value`` is a per-channel [B,C,1,1] / [1,C,1,1] tensor with C > 1."""
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[1] != 1:
        if C_map not in (1, value.shape[1]):
            raise ValueError(f"{name} has {value.shape[1]} channels but depth has {C_map}: "
                             f"use a one-channel depth or a {C_map}-channel {name}")
        return value.shape[1]
    return C_map


def _nonnegative(x, name: str) -> None:
    """ValueError if ``x`` has a negative value. Same policy as ``_checks.nonnegative`` (tensors
    are checked on the CPU always, on CUDA only with ``set_value_checks(True)``, never while
    compiling), but one reduction (amin) instead of a comparison tensor plus ``any``: it is a
    full extra read of the tensor, the largest cost of these element-wise ops after the kernel.
    NaN is not negative (it propagates to the output instead)."""
    if isinstance(x, torch.Tensor):
        if not x.numel() or not _checks.value_checks_enabled(x):
            return
        m = float(x.detach().amin())  # NaN if x has a NaN: then look at the other values
        if m < 0 or (m != m and bool((x.detach() < 0).any())):
            raise ValueError(f"{name} must be >= 0 (found negative values)")
    else:
        _checks.nonnegative(x, name)


def _check_beta(beta):
    if isinstance(beta, bool) or not isinstance(beta, (int, float, torch.Tensor)):
        raise TypeError(f"beta must be a float or a tensor, got {type(beta).__name__}")
    if isinstance(beta, torch.Tensor) and not beta.is_floating_point():
        raise TypeError(f"beta must be a floating-point tensor, got {beta.dtype}")
    _nonnegative(beta, "beta")


def _transmission_args(depth, beta, B: int):
    """(beta as [B, C] compute dtype, C) for a depth [B,1|C,H,W] (checked by the caller)."""
    _check_beta(beta)
    C = _param_channels(beta, "beta", depth.shape[1])
    return as_bc(beta, "beta", B, C, compute_dtype(depth.dtype), depth.device), C


def transmission_from_depth(depth, beta, *, backend="auto"):
    """Transmission of a homogeneous haze from scene depth (Koschmieder / Beer-Lambert).

        t = exp(-beta d)

    As used for haze synthesis by RESIDE (Li et al., "Benchmarking Single Image Dehazing and
    Beyond", TIP 2019) and in DCP (He et al., CVPR 2009, eq. 2).

    Args:
        depth: scene depth d [B,1,H,W] or [B,C,H,W], float16/bfloat16/float32/float64, >= 0, in
            the units beta is per (e.g. metres with beta in 1/m; RESIDE uses depths normalised
            per image). Depth, not disparity: a disparity (inverse depth) map would make near
            objects the haziest.
        beta: scattering coefficient >= 0: a float, a 0-d tensor, [B,1,1,1], [B,C,1,1] or
            [1,C,1,1] (per-channel beta with a one-channel depth gives a C-channel t). RESIDE
            presets: ``RESIDE_PRESETS``.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        t [B,C',H,W] in depth's dtype, values in [0, 1] (exp underflows to 0 for a large beta d);
        C' = beta's channel count if beta is per-channel, else depth's. Gradients flow to depth
        (-beta t) and beta (-d t, summed over the pixels a beta value covers). The C++ CPU
        kernel computes the float32 exp with a vectorised polynomial (asm_math.h ``exp_host``,
        within 2 ulp of expf, subnormals, inf and NaN as expf); float64 uses ``exp``. Autocast
        does not touch this op: it runs in depth's dtype.

    Raises:
        TypeError: depth not a floating tensor; beta not a float or floating tensor.
        ValueError: depth not 4-d; a bad beta shape; negative depth or beta (a value check:
            always for a Python float and CPU tensors, on CUDA tensors only with
            ``set_value_checks(True)``, since it costs a device-to-host sync).
        RuntimeError: the requested backend is unavailable for depth's device.
    """
    _checks.image(depth, "depth")
    _nonnegative(depth, "depth")
    if isinstance(beta, torch.Tensor):
        _checks.same_device("beta", beta, "depth", depth)
    b = resolve_backend(backend, FAMILY, depth.device)
    if b == "reference":
        _check_beta(beta)
        if isinstance(beta, torch.Tensor):
            as_bc(beta, "beta", depth.shape[0], _param_channels(beta, "beta", depth.shape[1]), beta.dtype, beta.device)
        return _ref_asm.transmission_from_depth(depth, beta)
    beta_bc, _ = _transmission_args(depth, beta, depth.shape[0])
    return _transmission(b, depth, beta_bc)


def synthesize_haze(J, A, *, t=None, depth=None, beta=None, backend="auto"):
    """Synthesise a hazy image from a clear one with the atmospheric scattering model.

        I = J t + A (1 - t),    t = exp(-beta d) when depth and beta are given

    Koschmieder's model as used for the RESIDE haze synthesis (Li et al., TIP 2019) and in DCP
    (He et al., CVPR 2009, eq. 1). Give exactly one of ``t`` or ``depth`` with ``beta``; with
    depth, t = exp(-beta d) is computed inside the same fused pass (never written to memory).

    Args:
        J: clear image [B,C,H,W], float16/bfloat16/float32/float64, values in [0, 1].
        A: atmospheric light: a float, a 0-d tensor, [B,1,1,1], [B,C,1,1] or [1,C,1,1]
            (RESIDE: indoor 0.7-1.0, outdoor 0.8-1.0; see ``RESIDE_PRESETS``).
        t: transmission [B,1,H,W] or [B,C,H,W] in [0, 1] (not checked), cast to J's dtype.
        depth: scene depth [B,1,H,W] or [B,C,H,W], >= 0. Depth, not disparity: a disparity
            (inverse depth) map would make near objects hazier, the opposite of real haze.
        beta: scattering coefficient >= 0, same forms as A (RESIDE: indoor 0.6-1.8, outdoor
            0.04-0.2, for depth normalised per image).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        I [B,C,H,W] in J's dtype. Gradients flow to J (t), t (J - A), A (1 - t), and through
        t = exp(-beta d) to depth and beta. Autocast does not touch this op: it runs in J's
        dtype.

    Raises:
        TypeError: a non-tensor or non-floating J/t/depth, a non-float/tensor A or beta.
        ValueError: wrong ndim; t/depth not [B,1|C,H,W] matching J; bad A/beta shapes; both or
            neither of t and (depth, beta); negative depth or beta (value check: always for
            Python floats and CPU tensors, on CUDA only with ``set_value_checks(True)``).
        RuntimeError: the requested backend is unavailable for J's device.
    """
    _checks.image(J, "J")
    if t is not None:
        if depth is not None or beta is not None:
            raise ValueError("synthesize_haze: give either t or depth and beta, not both")
        _checks.map_like(t, "t", J, "J")
    else:
        if depth is None or beta is None:
            raise ValueError("synthesize_haze: give t, or both depth and beta (got "
                             f"depth={'a tensor' if depth is not None else None}, "
                             f"beta={'given' if beta is not None else None})")
        _checks.map_like(depth, "depth", J, "J")
        _nonnegative(depth, "depth")
        _check_beta(beta)
    b = resolve_backend(backend, FAMILY, J.device)
    B, C = J.shape[:2]
    cdt = compute_dtype(J.dtype)
    if b == "reference":
        as_bc(A, "A", B, C, cdt, J.device)  # shape/type checks only
        if beta is not None:
            as_bc(beta, "beta", B, C, cdt, J.device)
        return _ref_asm.synthesize_haze(J, A, t=t, depth=depth, beta=beta)
    A_bc = as_bc(A, "A", B, C, cdt, J.device)
    if t is None:
        return _synthesize_depth(b, J, depth.to(J.dtype), A_bc, as_bc(beta, "beta", B, C, cdt, J.device))
    return _synthesize(b, J, t.to(J.dtype), A_bc)


def recompose_k(I, K, b=1.0, *, backend="auto"):
    """AOD-Net's recomposition of the clear image from the unified variable K.

        J = K I - K + b

    From Li et al., "AOD-Net: All-in-One Dehazing Network" (ICCV 2017, eq. 4), where
    K = ((I - A)/t + (A - b)) / (I - 1) folds t and A into one map predicted by the network (the
    closed form is singular where I = 1, e.g. a saturated sky, so K is predicted, not computed).

    Args:
        I: hazy image [B,C,H,W], float16/bfloat16/float32/float64, values in [0, 1].
        K: [B,1,H,W] or [B,C,H,W] (unbounded), cast to I's dtype.
        b: constant bias (AOD-Net: 1), a float, a 0-d tensor, [B,1,1,1], [B,C,1,1] or [1,C,1,1].
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        J [B,C,H,W] in I's dtype (not clamped; AOD-Net applies a ReLU after). Gradients flow to
        I (K), K (I - 1) and b (1, summed over the pixels a b value covers). Autocast does not
        touch this op: it runs in I's dtype.

    Raises:
        TypeError: a non-tensor or non-floating I/K, a non-float/tensor b.
        ValueError: wrong ndim, K not [B,1|C,H,W] matching I, a bad b shape.
        RuntimeError: the requested backend is unavailable for I's device.
    """
    _checks.image(I, "I")
    _checks.map_like(K, "K", I, "I")
    be = resolve_backend(backend, FAMILY, I.device)
    B, C = I.shape[:2]
    b_bc = as_bc(b, "b", B, C, compute_dtype(I.dtype), I.device)
    if be == "reference":
        return _ref_asm.recompose_k(I, K, b)
    return _recompose(be, I, K.to(I.dtype), b_bc)


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
