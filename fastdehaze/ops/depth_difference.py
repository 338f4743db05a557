"""Depth-difference ops (DCMPNet "difference perception", SPEC section 5).

From Zhang et al., "Depth Information Assisted Collaborative Mutual Promotion Network for Single
Image Dehazing" (DCMPNet, CVPR 2024), ``train.py``: the depth loss is weighted per pixel by a
softmax taken per image over all C*H*W values of the signed difference between the dehazed
output and the ground truth:

    diff    = J^ - J
    P       = softmax over all C*H*W values of diff, per image
    W       = sum_c (P + eps)                                   [B,1,H,W], eps = 1e-7
    L_depth = L1(W * D^, W * D) + L1(D^, D)                      (L1 = mean absolute error)

The fused kernels are an online softmax (per image: running max and sum of exponentials in one
pass over memory, split over threads/programs and merged by a second-level reduction), then one
pass per pixel over the channels. ``depth_difference_loss`` never writes W (nor P) to memory;
its backward is one pass (the per-image sum the softmax backward needs is computed by the
forward). Gradients go through the softmax into the images (W is not detached, as in DCMPNet).

Autocast: these ops are not on autocast's lists. They run in the dtype of their inputs
(``depth_difference_loss`` first promotes its four inputs to their common dtype, as eager
type promotion does), compute in float32 for half inputs and return the loss as a float32
scalar, which is what autocast does for softmax and l1_loss (float32 list). So the same call
works on the mixed float16/float32 tensors an autocast region produces.

No argument check here reads tensor values: nothing forces a device-to-host sync.

Determinism (Triton backend): bitwise the same on every run (two-level reductions: per-program
partials merged by torch, no atomics).
"""
from __future__ import annotations

import math

import torch

from ..reference import depth_difference as _ref
from . import _checks
from ._dispatch import FusedOp, resolve_backend

__all__ = ["difference_perception_weight", "depth_difference_loss"]

FAMILY = "depth_difference"


def _cdt(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- difference_perception_weight -------------------------------------------------------------

def _dpw_fake(diff, eps, normalize):
    B, C, H, W = diff.shape
    return diff.new_empty((B, 1, H, W)), diff.new_empty((B,), dtype=_cdt(diff.dtype))


def _dpw_backward_fake(grad, diff, lse, normalize):
    return diff.new_empty(diff.shape)


def _dpw_setup(ctx, inputs, output):
    diff, eps, normalize = inputs
    W, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(diff, lse)
    ctx.normalize = normalize


def _dpw_backward(ctx, backward_op, grad_W, grad_lse):
    diff, lse = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None
    return backward_op(grad_W, diff, lse, ctx.normalize), None, None


_dpw = FusedOp(
    "difference_perception_weight", FAMILY,
    "(Tensor diff, float eps, bool normalize) -> (Tensor, Tensor)",
    fake=_dpw_fake,
    backward_schema="(Tensor grad, Tensor diff, Tensor lse, bool normalize) -> Tensor",
    backward_fake=_dpw_backward_fake,
    setup_context=_dpw_setup, backward=_dpw_backward)


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite float >= 0, got {eps}")
    return float(eps)


def difference_perception_weight(diff, eps=1e-7, normalize=False, *, backend="auto"):
    """Per-pixel difference-perception weight of DCMPNet (CVPR 2024, ``train.py``).

        P = softmax over all C*H*W values of diff, per image
        W = sum_c (P + eps)               (normalize=False, DCMPNet's weight)
        W = H * W_img * sum_c P           (normalize=True, our addition: mean exactly 1, no eps)

    Each P is about 1/(C H W), so DCMPNet's W is about 1/(H W) + C eps (1.5e-5 at 256x256); with
    ``diff = 0`` it is exactly 1/(H W) + C eps at every pixel. The softmax subtracts the
    per-image maximum (online), so large differences (e.g. images in [0, 255]) do not overflow.

    Args:
        diff: signed difference [B,C,H,W] (DCMPNet: dehazed - ground truth, images in [-1, 1]),
            float16/bfloat16/float32/float64; any strides (read through a contiguous copy).
        eps: added to every P before the channel sum (default 1e-7, DCMPNet's); float >= 0.
            Ignored when ``normalize`` is True.
        normalize: return H*W*sum_c P instead (mean 1 per image at any resolution).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        W [B,1,H,W], contiguous, in diff's dtype (computed in float32 for half inputs; note that
        DCMPNet's unnormalised W, ~1e-5, is subnormal in float16: use normalize=True or bfloat16
        there). Differentiable w.r.t. diff through the softmax:
        dL/d diff_i = P_i (g_i - sum_j P_j g_j), g = dL/dP. NaN anywhere in an image (or +inf)
        makes that image's W NaN, as torch.softmax.

    Raises:
        TypeError: diff not a floating tensor; eps not a float; normalize not a bool.
        ValueError: diff not 4-D; eps negative or not finite.
        RuntimeError: the requested backend is unavailable for diff's device.
    """
    _checks.image(diff, "diff")
    eps = _check_eps(eps)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    b = resolve_backend(backend, FAMILY, diff.device)
    if b == "reference":
        return _ref.difference_perception_weight(diff, eps, normalize)
    return _dpw(b, diff, eps, normalize)[0]


# ---- depth_difference_loss ---------------------------------------------------------------------

def _ddl_fake(dehazed, clear, depth_pred, depth_target, eps):
    cdt = _cdt(dehazed.dtype)
    return dehazed.new_empty((), dtype=cdt), dehazed.new_empty((dehazed.shape[0], 2), dtype=cdt)


def _ddl_backward_fake(grad, dehazed, clear, depth_pred, depth_target, stats, eps, n0, n1, n2, n3):
    return tuple(x.new_empty(x.shape if n else (0,)) for x, n in
                 ((dehazed, n0), (clear, n1), (depth_pred, n2), (depth_target, n3)))


def _ddl_setup(ctx, inputs, output):
    dehazed, clear, depth_pred, depth_target, eps = inputs
    loss, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(dehazed, clear, depth_pred, depth_target, stats)
    ctx.eps = eps


def _ddl_backward(ctx, backward_op, grad_loss, grad_stats):
    dehazed, clear, depth_pred, depth_target, stats = ctx.saved_tensors
    needs = tuple(bool(n) for n in ctx.needs_input_grad[:4])
    if not any(needs):
        return None, None, None, None, None
    grads = backward_op(grad_loss, dehazed, clear, depth_pred, depth_target, stats, ctx.eps, *needs)
    return tuple(g if n else None for g, n in zip(grads, needs)) + (None,)


_ddl = FusedOp(
    "depth_difference_loss", FAMILY,
    "(Tensor dehazed, Tensor clear, Tensor depth_pred, Tensor depth_target, float eps) -> (Tensor, Tensor)",
    fake=_ddl_fake,
    backward_schema="(Tensor grad, Tensor dehazed, Tensor clear, Tensor depth_pred, Tensor depth_target, "
                    "Tensor stats, float eps, bool needs_dehazed, bool needs_clear, bool needs_pred, "
                    "bool needs_target) -> (Tensor, Tensor, Tensor, Tensor)",
    backward_fake=_ddl_backward_fake,
    setup_context=_ddl_setup, backward=_ddl_backward)


def _check_loss_args(dehazed, clear, depth_pred, depth_target):
    _checks.image(dehazed, "dehazed")
    _checks.image(clear, "clear")
    _checks.image(depth_pred, "depth_pred")
    _checks.image(depth_target, "depth_target")
    for name, x in (("clear", clear), ("depth_pred", depth_pred), ("depth_target", depth_target)):
        _checks.same_device(name, x, "dehazed", dehazed)
    if clear.shape != dehazed.shape:
        raise ValueError(f"clear must have the shape of dehazed {tuple(dehazed.shape)}, got {tuple(clear.shape)}")
    B, _, H, W = dehazed.shape
    if tuple(depth_pred.shape) != (B, 1, H, W):
        raise ValueError(f"depth_pred must be [B,1,H,W] = {(B, 1, H, W)} matching dehazed {tuple(dehazed.shape)}, "
                         f"got {tuple(depth_pred.shape)}")
    if depth_target.shape != depth_pred.shape:
        raise ValueError(f"depth_target must have the shape of depth_pred {tuple(depth_pred.shape)}, "
                         f"got {tuple(depth_target.shape)}")


def depth_difference_loss(dehazed, clear, depth_pred, depth_target, eps=1e-7, *, backend="auto"):
    """DCMPNet's difference-perception depth loss (CVPR 2024, ``train.py``), fused.

        W       = sum_c (softmax over C*H*W of (dehazed - clear), per image + eps)
        L_depth = L1(W * depth_pred, W * depth_target) + L1(depth_pred, depth_target)

    The fused backends never write W to memory: pass 1 takes the per-image online softmax
    statistics of dehazed - clear, pass 2 forms W per pixel from its channels and accumulates
    |W (D^ - D)| and |D^ - D|; the backward is a single pass.

    Args:
        dehazed: network output J^ [B,C,H,W] (DCMPNet: images in [-1, 1]; the softmax depends on
            that scale, so pass the tensors exactly as the training code has them).
        clear: ground truth J, same shape as dehazed.
        depth_pred: depth of the dehazed image D^ [B,1,H,W] (any units; the loss is in them).
        depth_target: depth of the ground truth D [B,1,H,W] (DCMPNet: a frozen teacher's
            disparity).
        eps: DCMPNet's 1e-7 added to each softmax value; float >= 0.
        backend: "auto", "reference", "cpu", "cuda" or "triton".
        All four tensors: float16/bfloat16/float32/float64 on one device, any strides/memory
        format (read through contiguous copies); mixed dtypes are promoted to the common dtype.

    Returns:
        0-d tensor: float64 for float64 inputs, float32 otherwise (also for half inputs). NaN
        for an empty batch (the mean of nothing, as F.l1_loss). Gradients flow to dehazed
        (through the softmax), to clear (the negative of dehazed's), to depth_pred and to
        depth_target when they require grad.

    Raises:
        TypeError: a non-tensor or non-floating input; eps not a float.
        ValueError: a non-4-D input, clear not shaped like dehazed, depth_pred not [B,1,H,W]
            matching dehazed, depth_target not shaped like depth_pred, inputs on different
            devices, eps negative or not finite.
        RuntimeError: the requested backend is unavailable for the inputs' device.
    """
    _check_loss_args(dehazed, clear, depth_pred, depth_target)
    eps = _check_eps(eps)
    b = resolve_backend(backend, FAMILY, dehazed.device)
    if b == "reference":
        return _ref.depth_difference_loss(dehazed, clear, depth_pred, depth_target, eps)
    dt = torch.promote_types(torch.promote_types(dehazed.dtype, clear.dtype),
                             torch.promote_types(depth_pred.dtype, depth_target.dtype))
    dehazed, clear, depth_pred, depth_target = (x.to(dt) for x in (dehazed, clear, depth_pred, depth_target))
    return _ddl(b, dehazed, clear, depth_pred, depth_target, eps)[0]
