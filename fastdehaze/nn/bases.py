"""Built-in base dehazing networks (issue 9 item 3) and the registry of built-in model classes.

* :class:`AODNet`: AOD-Net (Li et al., "AOD-Net: All-in-One Dehazing Network", ICCV 2017),
  J = K I - K + b through the fused ``fastdehaze.ops.recompose_k``.
* :class:`UNet`: a small residual U-Net (our design), J = clamp(I + net(I), 0, 1).

Both are written here from the papers (nothing copied), map [B,3,H,W] -> [B,3,H,W] in [0, 1]
for any H, W >= 1 (zero padding inside the convolutions, as AOD-Net's; the U-Net pads its input
to a multiple of 2^levels by reflection, or replication where reflection is impossible, and
crops back), use no BatchNorm (so DDP without SyncBN is exact) and follow the model contract
(``config()``, ``receptive_field``, ``pad_multiple``, ``value_range``, ``global_context``).

:data:`ARCHITECTURES` maps a class name to every built-in model class; other modules add theirs
with :func:`register_architecture`. :func:`model_stats` counts parameters and MACs per megapixel
(the numbers quoted in the docstrings come from it, and tests/test_bases.py checks them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = ["ARCHITECTURES", "register_architecture", "AODNet", "UNet", "model_stats"]

#: name -> class of every built-in model class (the ``"name"`` of a model spec).
ARCHITECTURES: dict = {}


def register_architecture(cls):
    """Class decorator: add ``cls`` to :data:`ARCHITECTURES` under its class name.

    Raises ValueError if another class of the same name is registered (a reload of the same
    module replaces its own entry)."""
    name = cls.__name__
    old = ARCHITECTURES.get(name)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"register_architecture: {name!r} is already registered by {old.__module__}")
    ARCHITECTURES[name] = cls
    return cls


# ---- helpers ------------------------------------------------------------------------------------

def _int_arg(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def check_image(I, name="I", channels=3):
    """TypeError/ValueError naming ``name`` unless I is a floating [B,channels,H,W], H, W >= 1."""
    if not isinstance(I, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(I).__name__}")
    if not I.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor with values in [0, 1], got {I.dtype}")
    if I.dim() != 4 or I.shape[1] != channels:
        raise ValueError(f"{name} must be [B,{channels},H,W], got shape {tuple(I.shape)}")
    if I.shape[2] < 1 or I.shape[3] < 1:
        raise ValueError(f"{name} must have H, W >= 1, got shape {tuple(I.shape)}")


def check_dtype(I, module: nn.Module, name="I"):
    """TypeError naming ``name`` when I's dtype differs from ``module``'s floating parameters (the
    convolutions would fail with a message naming neither), unless autocast is on for I's device."""
    p = next((q for q in module.parameters() if q.is_floating_point()), None)
    if p is None or I.dtype == p.dtype or torch.is_autocast_enabled(I.device.type):
        return
    raise TypeError(f"{name} is {I.dtype} but the model's parameters are {p.dtype}: pass {name}.to({p.dtype}), "
                    f"convert the model (model.to({I.dtype})), or run under torch.autocast")


def pad_to_multiple(x: torch.Tensor, m: int):
    """Pad x [B,C,H,W] at the bottom/right to multiples of m: reflection where the side allows
    it (pad < size), replication otherwise (a side of 1-3 pixels). Returns (padded, H, W)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % m, (-W) % m
    if ph == 0 and pw == 0:
        return x, H, W
    mode = "reflect" if (ph < H and pw < W) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), H, W


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else 0,
                     padding_mode="zeros")


def model_stats(model: nn.Module, size=(256, 256)) -> dict:
    """Parameter count and multiply-accumulates per megapixel of one forward at ``size``.

    MACs count every Conv2d/ConvTranspose2d/Linear (weight elements times output positions);
    element-wise work (activations, the fused recomposition) is not counted. Returns
    ``{"params": int, "macs_per_mp": float}`` (MACs per megapixel of input)."""
    H, W = size
    macs = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            macs[0] += out[0].numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.ConvTranspose2d):
            macs[0] += inp[0][0].numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.Linear):
            macs[0] += out[0].numel() * mod.in_features

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        p = next(model.parameters(), None)
        x = torch.rand(1, 3, H, W, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            model(x)
    finally:
        for h in hs:
            h.remove()
    return {"params": sum(p.numel() for p in model.parameters()), "macs_per_mp": macs[0] / (H * W) * 1e6}


class _ContractMixin:
    value_range = (0.0, 1.0)

    def global_context(self, I_full) -> dict:
        """Nothing global (every output pixel depends on a local window only): ``{}``."""
        return {}


# ---- AOD-Net ------------------------------------------------------------------------------------

@register_architecture
class AODNet(_ContractMixin, nn.Module):
    """AOD-Net (Li, Peng, Wang, Xu, Feng, "AOD-Net: All-in-One Dehazing Network", ICCV 2017).

    The K-estimation module of the paper, five convolutions of 3 channels with ReLU:
    conv1 1x1 (I), conv2 3x3 (conv1), conv3 5x5 ([conv1, conv2]), conv4 7x7 ([conv2, conv3]),
    conv5 3x3 ([conv1, conv2, conv3, conv4]) -> K [B,3,H,W], then the clean-image generation
    module J = ReLU(K I - K + b) with b = 1 (eq. 4) through the fused
    ``fastdehaze.ops.recompose_k``, clamped to [0, 1] (``clamp=True``; the paper has the ReLU
    only). Convolutions pad with zeros as in the paper (a padding mode other than zeros made
    ``torch.compile``'s backward fail in torch 2.14: replication_pad2d_backward strides).

    Size (``model_stats``): 1,761 parameters (the paper's count), 1.746 GMAC per megapixel,
    receptive field 15 pixels (1 + 0 + 2 + 4 + 6 + 2: conv3 sees conv2, conv4 sees conv3, conv5
    sees conv4). ``pad_multiple`` 1, no global context.

    Args:
        b: the constant bias of eq. 4 (1.0).
        clamp: clamp J to [0, 1] (True).
        backend: passed to ``recompose_k``.

    ``forward(I, context=None)``: I [B,3,H,W] float in [0, 1] (B may be 0; any H, W >= 1;
    channels_last works; under CPU/CUDA autocast the convolutions run in fp16/bf16 and the
    recomposition in I's dtype) -> J [B,3,H,W] in I's dtype. ``context`` is accepted and unused.

    Raises:
        TypeError/ValueError: I not a floating [B,3,H,W] tensor with H, W >= 1 (naming ``I``).
    """
    receptive_field = 15
    pad_multiple = 1

    def __init__(self, b: float = 1.0, clamp: bool = True, backend: str = "auto"):
        super().__init__()
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise ValueError(f"b must be a finite float, got {b!r}")
        self.b, self.clamp, self.backend = float(b), bool(clamp), backend
        self.conv1 = _conv(3, 3, 1)
        self.conv2 = _conv(3, 3, 3)
        self.conv3 = _conv(6, 3, 5)
        self.conv4 = _conv(6, 3, 7)
        self.conv5 = _conv(12, 3, 3)

    def config(self) -> dict:
        return {"b": self.b, "clamp": self.clamp, "backend": self.backend}

    def forward(self, I, context=None):
        check_image(I)
        check_dtype(I, self)
        x1 = F.relu(self.conv1(I))
        x2 = F.relu(self.conv2(x1))
        x3 = F.relu(self.conv3(torch.cat((x1, x2), 1)))
        x4 = F.relu(self.conv4(torch.cat((x2, x3), 1)))
        K = F.relu(self.conv5(torch.cat((x1, x2, x3, x4), 1)))
        J = ops.recompose_k(I, K.to(I.dtype), self.b, backend=self.backend)
        return J.clamp(0.0, 1.0) if self.clamp else F.relu(J)


# ---- U-Net --------------------------------------------------------------------------------------

class _ResBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(x))) (no normalisation)."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = _conv(c, c, 3), _conv(c, c, 3)

    def forward(self, x):
        return x + self.c2(F.relu(self.c1(x)))


class _UNetCore(nn.Module):
    """The encoder-decoder shared by :class:`UNet` and ``DepthEstimator``: an input conv 3x3,
    per level ``blocks`` residual blocks, a 2x2 stride-2 conv down (channels x2, at most
    4 x width), a bottleneck, 2x2 stride-2 transposed convs up with additive skips, a 3x3
    output conv. Input sides must be multiples of 2^levels."""

    def __init__(self, cin, cout, width, levels, blocks):
        super().__init__()
        ch = [min(width * 2 ** l, 4 * width) for l in range(levels + 1)]
        self.inc = _conv(cin, width, 3)
        self.enc = nn.ModuleList(nn.Sequential(*[_ResBlock(ch[l]) for _ in range(blocks)]) for l in range(levels))
        self.down = nn.ModuleList(_conv(ch[l], ch[l + 1], 2, stride=2) for l in range(levels))
        self.mid = nn.Sequential(*[_ResBlock(ch[levels]) for _ in range(blocks)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[l + 1], ch[l], 2, stride=2) for l in range(levels))
        self.dec = nn.ModuleList(nn.Sequential(*[_ResBlock(ch[l]) for _ in range(blocks)]) for l in range(levels))
        self.outc = _conv(width, cout, 3)
        self.levels, self.blocks = levels, blocks

    @staticmethod
    def radius(levels, blocks):
        """Per-side extent of the window one output pixel sees: 1 (in conv) + per level l
        (jump 2^l) 2*blocks convs of radius 1 in the encoder and in the decoder plus 2^l for the
        2x2 down/up pair's phase, + 2*blocks*2^levels in the bottleneck + 1 (out conv)."""
        r = 2 + 2 * blocks * 2 ** levels
        for l in range(levels):
            r += 2 * 2 * blocks * 2 ** l + 2 ** l
        return r

    def forward(self, x):
        x = F.relu(self.inc(x))
        skips = []
        for enc, down in zip(self.enc, self.down):
            x = enc(x)
            skips.append(x)
            x = F.relu(down(x))
        x = self.mid(x)
        for l in reversed(range(self.levels)):
            x = self.dec[l](F.relu(self.up[l](x)) + skips[l])
        return self.outc(F.relu(x))


@register_architecture
class UNet(_ContractMixin, nn.Module):
    """A small residual U-Net (our design; in the spirit of the U-Nets of dehazing, e.g.
    gUNet, Song et al. 2022, without its gating), no normalisation layers.

        J = clamp(I + net(I), 0, 1)

    net: 3x3 conv to ``width`` channels; at each of ``levels`` levels ``blocks`` residual blocks
    (x + conv3x3(relu(conv3x3(x)))) then a 2x2 stride-2 conv (channels doubled, at most
    4 x width); a bottleneck of ``blocks`` blocks; 2x2 stride-2 transposed convs back up, each
    added to its skip and followed by ``blocks`` blocks; a 3x3 conv to 3 channels, whose weights
    start at 0.1 x PyTorch's default so that J starts near I. Convolutions pad with zeros;
    the input is padded at the bottom/right to a multiple of 2^levels (reflection, or
    replication where a side is too small) and the output cropped back.

    Size at the defaults (width=16, levels=3, blocks=1; ``model_stats``): 322,243 parameters
    (1.29 MB in float32), 32.22 GMAC per megapixel, receptive field 107 pixels (a per-side
    bound of 53 = 2 + 2*2^3 + sum over levels l of 5*2^l; tests/test_bases.py measures it),
    ``pad_multiple`` = 2^levels (8), no global context.

    Args:
        width: channels at full resolution (16).
        levels: number of 2x downsamplings (3).
        blocks: residual blocks per level (1).
        clamp: clamp J to [0, 1] (True; False returns I + net(I) unclamped).
        zero_init: start the output convolution at zero, so that J == I exactly at step 0 (as a
            refining base of :class:`~fastdehaze.nn.ProgressiveDehazer` keeps J == J0); default
            False (0.1 x PyTorch's default init).

    ``forward(I, context=None)``: I [B,3,H,W] float in [0, 1] (B may be 0; any H, W >= 1;
    channels_last works; under CPU/CUDA autocast the convolutions run in fp16/bf16 and the
    residual sum in I's dtype) -> J [B,3,H,W] in I's dtype. ``context`` is accepted and unused.

    Raises:
        TypeError/ValueError: I not a floating [B,3,H,W] tensor with H, W >= 1 (naming ``I``);
        a bad width/levels/blocks at construction.
    """

    def __init__(self, width: int = 16, levels: int = 3, blocks: int = 1, clamp: bool = True,
                 zero_init: bool = False):
        super().__init__()
        self.width, self.levels = _int_arg(width, "width", 1), _int_arg(levels, "levels", 0)
        if width * 2 ** levels > 4096:
            raise ValueError(f"width * 2**levels must be <= 4096 (the bottleneck's channels), got width={width}, "
                             f"levels={levels}")
        self.blocks, self.clamp = _int_arg(blocks, "blocks", 1), bool(clamp)
        if not isinstance(zero_init, bool):
            raise TypeError(f"zero_init must be a bool, got {type(zero_init).__name__}")
        self.zero_init = zero_init
        self.net = _UNetCore(3, 3, width, levels, blocks)
        with torch.no_grad():
            self.net.outc.weight.mul_(0.0 if zero_init else 0.1)
            self.net.outc.bias.zero_()

    @property
    def receptive_field(self) -> int:
        return 2 * _UNetCore.radius(self.levels, self.blocks) + 1

    @property
    def pad_multiple(self) -> int:
        return 2 ** self.levels

    def config(self) -> dict:
        return {"width": self.width, "levels": self.levels, "blocks": self.blocks, "clamp": self.clamp,
                "zero_init": self.zero_init}

    def forward(self, I, context=None):
        check_image(I)
        check_dtype(I, self)
        x, H, W = pad_to_multiple(I, self.pad_multiple)
        J = I + self.net(x)[..., :H, :W]
        return J.clamp(0.0, 1.0) if self.clamp else J
