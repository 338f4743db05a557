"""Argument checks shared by the public ops. All raise ValueError/TypeError naming the argument.

Checks that need tensor values (negative depth, ...) would force a device-to-host sync: they
run on CPU tensors always, on CUDA tensors only when ``FASTDEHAZE_CHECK_VALUES=1`` (or
:func:`set_value_checks`), and never while torch.compile traces.
"""
from __future__ import annotations

import operator
import os

import torch

_value_checks_on_cuda = os.environ.get("FASTDEHAZE_CHECK_VALUES") == "1"


def set_value_checks(enabled: bool) -> None:
    """Turn value checks (e.g. depth >= 0) on CUDA tensors on or off (they cost a sync)."""
    global _value_checks_on_cuda
    _value_checks_on_cuda = bool(enabled)


def value_checks_enabled(x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    return x.device.type == "cpu" or _value_checks_on_cuda


def image(x, name: str, *, channels: int | None = None, ndim: int = 4) -> torch.Tensor:
    """``x`` must be a floating tensor with ``ndim`` dims (and ``channels`` channels if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}; "
                        "convert uint8 images with x.float() / 255 at the I/O boundary")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims [B,C,H,W], got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}")
    if ndim == 4 and x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(x.shape)}")
    return x


def same_device(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")


def map_like(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str, *, allow_channels=(1,)) -> None:
    """``x`` [B,c,H,W] with c in ``allow_channels`` (or c == C of ``ref``), same B, H, W as ``ref``."""
    image(x, name)
    same_device(name, x, ref_name, ref)
    B, C, H, W = ref.shape
    if x.shape[0] != B or x.shape[2:] != ref.shape[2:] or (x.shape[1] not in allow_channels and x.shape[1] != C):
        raise ValueError(f"{name} must be [B,1,H,W] or [B,{C},H,W] matching {ref_name} {tuple(ref.shape)}, "
                         f"got {tuple(x.shape)}")


def nonnegative(x, name: str) -> None:
    """Raise ValueError if any value of ``x`` (float or tensor) is negative (value check: see module doc)."""
    if isinstance(x, torch.Tensor):
        if value_checks_enabled(x) and bool((x < 0).any()):
            raise ValueError(f"{name} must be >= 0 (found negative values)")
    elif x < 0:
        raise ValueError(f"{name} must be >= 0, got {x}")


def integer(v, name: str) -> int:
    """``v`` as a Python int: ints and numpy integers (``operator.index``); bool and floats are a
    TypeError naming the argument."""
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None


def window_radius(r: int, H: int, W: int) -> int:
    """A window radius past the image changes nothing (windows are clipped at the border), so the
    fused kernels get ``min(r, max(H, W))``: no kernel sizes a buffer or a window from an
    arbitrary int (``2 r + 1`` of r = 2**62 would overflow int64)."""
    return min(r, max(H, W, 1))


def window_patch(patch: int, H: int, W: int) -> int:
    """The odd window side ``patch`` clamped like :func:`window_radius` (stays odd)."""
    return 2 * window_radius(patch // 2, H, W) + 1
