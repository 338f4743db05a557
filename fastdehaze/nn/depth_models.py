"""DCMPNet's dual-task pieces (issue 9 item 4): a small depth network and a dehazer fed with a
depth estimate of its hazy input.

DCMPNet (Zhang et al., "Depth Information Assisted Collaborative Mutual Promotion Network for
Single Image Dehazing", CVPR 2024) trains a dehazer together with a depth network: the depth
network's estimate guides the dehazer, and the depth of the dehazed output is trained against
the depth of the clear image with the difference-perception loss (``fastdehaze.nn.DCMPNetLoss``).
The modules here are our small versions of those roles (sizes and wiring are ours):

* :class:`DepthEstimator`: image [B,3,H,W] -> depth [B,1,H,W] >= 0 (softplus head).
* :class:`DepthGuidedBase`: D = depth(I); J = base(adapter([I, D])) with a 4-to-3 1x1 adapter.

One training step (as in tests/test_depth_models.py)::

    model = DepthGuidedBase()                         # UNet base + DepthEstimator
    J_hat = model(I)                                  # the depth of I guides the base
    D_hat = model.estimate_depth(J_hat)               # depth of the dehazed output
    losses = DCMPNetLoss(contrast_weight=0)(J_hat, J, I, D_hat, D_teacher)
    (losses.dehaze + losses.depth).backward()         # reaches base, adapter and depth net
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .bases import UNet, _ContractMixin, _int_arg, _UNetCore, check_image, pad_to_multiple, \
    register_architecture

__all__ = ["DepthEstimator", "DepthGuidedBase", "DepthGuidedOutput"]


@register_architecture
class DepthEstimator(_ContractMixin, nn.Module):
    """A small monocular depth network (our design, for DCMPNet-style dual-task training).

        D = softplus(net(I))  >= 0

    net is the encoder-decoder of :class:`fastdehaze.nn.UNet` (3x3 conv, per level a residual
    block and a 2x2 stride-2 conv, additive skips, transposed convs up, no normalisation) with a
    one-channel output. The input is padded to a multiple of 2^levels (reflection, replication
    where a side is too small) and the output cropped back. The scale of D is whatever the
    targets it is trained on use (a teacher's depth, or normalised depth maps): it is a relative
    depth, not metres, unless trained on metres.

    Size at the defaults (width=8, levels=3, blocks=1; ``fastdehaze.nn.bases.model_stats``):
    80,849 parameters, 8.13 GMAC per megapixel, receptive field 107 pixels (per-side bound 53,
    as the UNet's), ``pad_multiple`` 8, no global context.

    Args:
        width: channels at full resolution (8). levels: 2x downsamplings (3).
        blocks: residual blocks per level (1).

    ``forward(I, context=None)``: I [B,3,H,W] float (B may be 0, any H, W >= 1) -> [B,1,H,W]
    in I's dtype, >= 0.

    Raises:
        TypeError/ValueError: I not a floating [B,3,H,W] tensor with H, W >= 1 (naming ``I``);
        a bad width/levels/blocks.
    """

    def __init__(self, width: int = 8, levels: int = 3, blocks: int = 1):
        super().__init__()
        self.width, self.levels = _int_arg(width, "width", 1), _int_arg(levels, "levels", 0)
        self.blocks = _int_arg(blocks, "blocks", 1)
        self.net = _UNetCore(3, 1, width, levels, blocks)

    @property
    def receptive_field(self) -> int:
        return 2 * _UNetCore.radius(self.levels, self.blocks) + 1

    @property
    def pad_multiple(self) -> int:
        return 2 ** self.levels

    def config(self) -> dict:
        return {"width": self.width, "levels": self.levels, "blocks": self.blocks}

    def forward(self, I, context=None):
        check_image(I)
        x, H, W = pad_to_multiple(I, self.pad_multiple)
        return F.softplus(self.net(x)[..., :H, :W]).to(I.dtype)


class DepthGuidedOutput(NamedTuple):
    """``DepthGuidedBase.forward(I, return_depth=True)``: J [B,3,H,W] and the depth estimate of
    the hazy input I that guided it, [B,1,H,W]."""
    J: torch.Tensor
    depth: torch.Tensor


def _module_arg(v, what: str, default, trust_code: bool) -> nn.Module:
    if v is None:
        return default()
    if isinstance(v, nn.Module):
        return v
    if isinstance(v, dict):
        from .files import build_model
        return build_model(v, trust_code)
    raise TypeError(f"{what} must be None, an nn.Module or a spec dict {{'name': str, 'args': dict}}, "
                    f"got {type(v).__name__}")


def _spec(m: nn.Module) -> dict:
    from .files import model_spec
    return model_spec(m)


@register_architecture
class DepthGuidedBase(_ContractMixin, nn.Module):
    """A dehazer fed with a depth estimate of its own hazy input (the DCMPNet idea, our wiring).

        D = depth(I),    J = base(adapter([I, D]))

    ``adapter`` is a 1x1 convolution from the 4 channels [I, D] to the 3 a base takes; it starts
    as the identity on I plus a small random weight (std 0.05) on D, so at step 0 the base sees
    nearly I and the gradient already reaches the depth network. Train it as DCMPNet does: the
    depth network is also applied to the dehazed output (:meth:`estimate_depth`) and that depth
    is trained against the clear image's depth with ``fastdehaze.nn.DCMPNetLoss``; the same
    pair can weight features through ``fastdehaze.nn.DepthDifferenceAttention``.

    Args:
        base: the dehazer, any nn.Module [B,3,H,W] -> [B,3,H,W] (default ``UNet()``), or a
            spec ``{"name": ..., "args": ...}`` (a "module:Class" name needs ``trust_code``).
        depth: the depth network [B,3,H,W] -> [B,1,H,W] (default ``DepthEstimator()``), or a spec.
        trust_code: allow "module:Class" names in the specs (not part of ``config()``).

    Contract: ``receptive_field`` = 2 (r_depth + r_base) + 1 with r = receptive_field // 2 of
    each part (the base sees the depth of its whole window; modules without the attribute count
    as 1 pixel), ``pad_multiple`` the lcm of the parts', ``global_context`` the base's (keys
    prefixed "base."), computed on the adapted full image. Defaults: 403,107 parameters,
    40.36 GMAC per megapixel, receptive field 213 pixels.

    ``forward(I, context=None, return_depth=False)``: I [B,3,H,W] float in [0, 1] -> J [B,3,H,W]
    (the base's output), or :class:`DepthGuidedOutput` (J, depth) with ``return_depth=True``.

    Raises:
        TypeError/ValueError: I not a floating [B,3,H,W] tensor (naming ``I``); a bad ``base`` or
        ``depth`` argument (naming it).
    """

    def __init__(self, base=None, depth=None, *, trust_code: bool = False):
        super().__init__()
        self.base = _module_arg(base, "base", UNet, trust_code)
        self.depth = _module_arg(depth, "depth", DepthEstimator, trust_code)
        self.adapter = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            w = torch.zeros(3, 4, 1, 1)
            w[:, :3, 0, 0] = torch.eye(3)
            w[:, 3, 0, 0] = 0.05 * torch.randn(3)
            self.adapter.weight.copy_(w)
            self.adapter.bias.zero_()

    @property
    def receptive_field(self) -> int:
        r = getattr(self.depth, "receptive_field", 1) // 2 + getattr(self.base, "receptive_field", 1) // 2
        return 2 * r + 1

    @property
    def pad_multiple(self) -> int:
        a, b = int(getattr(self.base, "pad_multiple", 1)), int(getattr(self.depth, "pad_multiple", 1))
        return a * b // math.gcd(a, b)

    def config(self) -> dict:
        return {"base": _spec(self.base), "depth": _spec(self.depth)}

    def estimate_depth(self, x):
        """The depth network on any image x [B,3,H,W] (e.g. the dehazed output) -> [B,1,H,W]."""
        return self.depth(x)

    def _adapt(self, I):
        D = self.depth(I)
        return self.adapter(torch.cat((I, D.to(I.dtype)), 1)), D

    def global_context(self, I_full) -> dict:
        g = getattr(type(self.base), "global_context", None)
        if not callable(g) or g is _ContractMixin.global_context:  # none, or the built-ins' empty one
            return {}
        check_image(I_full, "I_full")
        x, _ = self._adapt(I_full)
        return {f"base.{k}": v for k, v in self.base.global_context(x).items()}

    def forward(self, I, context=None, return_depth: bool = False):
        check_image(I)
        x, D = self._adapt(I)
        if context:
            J = self.base(x, context={k[5:]: v for k, v in context.items() if k.startswith("base.")})
        else:
            J = self.base(x)
        return DepthGuidedOutput(J, D) if return_depth else J
