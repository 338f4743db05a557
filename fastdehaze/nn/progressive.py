"""Progressive dehazing: a Pre-restore Module (PRM) and any base network refining its output.

The framework comes from "Progressive Dehazing with Inter and Intra Contrastive Learning"
(ICASSP 2023): a PRM gives a first estimate J0 through the atmospheric scattering model (it
predicts t and A and inverts I = J t + A (1 - t)), an Alternative Restored Module (any existing
dehazing network, here ``base``) refines J0, and both J0 and the final J are supervised. Only
the paper's abstract is public (SPEC section 6): every architecture choice in this file (the
DCP-initialised PRM, the exponent form of the transmission correction, the global correction
head, how I and J0 reach the base) is ours.

* :class:`PreRestoreModule`: starts from the fused dark channel prior (He et al., CVPR 2009,
  guided-filter refinement of ECCV 2010) and learns a correction of its transmission and of its
  atmospheric light, so that J0 equals the DCP output at initialisation.
* :class:`ProgressiveDehazer`: PRM + base; ``forward(I)`` -> J,
  ``forward(I, return_j0=True)`` -> :class:`ProgressiveOutput` (J, J0).
* :func:`tiled_forward`: runs any model following the model contract (``global_context``,
  ``forward(x, context=...)``, ``receptive_field``, ``pad_multiple``) on overlapping tiles,
  equal to the untiled run.
"""
from __future__ import annotations

import importlib
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .bases import _int_arg, check_dtype
from .bases import check_image as _check_image
from .bases import pad_to_multiple as _pad_to

try:  # L's registry (fastdehaze/nn/bases.py); a no-op until that file exists
    from .bases import register_architecture as _register
except ModuleNotFoundError as e:  # pragma: no cover - only while bases.py is missing
    if e.name != f"{__package__}.bases":
        raise

    def _register(cls):
        return cls

__all__ = ["PreRestoreModule", "ProgressiveDehazer", "ProgressiveOutput", "tiled_forward"]


class ProgressiveOutput(NamedTuple):
    """What ``ProgressiveDehazer.forward(I, return_j0=True)`` returns.

    J: the final output [B,3,H,W]; J0: the PRM's first estimate [B,3,H,W] (both in I's dtype).
    """
    J: torch.Tensor
    J0: torch.Tensor


# ---- helpers ------------------------------------------------------------------------------------

def _float_arg(v, name, lo, hi, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    ok = (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _luma(I: torch.Tensor) -> torch.Tensor:
    """BT.601 luma [B,1,H,W] (the guide of the DCP pipeline)."""
    return 0.299 * I[:, 0:1] + 0.587 * I[:, 1:2] + 0.114 * I[:, 2:3]


def _spec_of(module: nn.Module) -> dict:
    """The contract's spec ``{"name", "args"}`` of a module (built-in name or "module:Class")."""
    try:
        from .files import model_spec  # F's implementation, when present
    except ImportError:
        model_spec = None
    if model_spec is not None:
        return model_spec(module)
    cls = type(module)
    reg = _registry()
    name = cls.__name__ if reg.get(cls.__name__) is cls else f"{cls.__module__}:{cls.__qualname__}"
    args = module.config() if hasattr(module, "config") else {}
    return {"name": name, "args": args}


def _registry() -> dict:
    try:
        from .bases import ARCHITECTURES
    except ImportError:
        return {c.__name__: c for c in (PreRestoreModule, ProgressiveDehazer)}
    return ARCHITECTURES


def _build(spec, what: str, trust_code: bool) -> nn.Module:
    """A module from a module or a spec dict (built-in names only unless ``trust_code``)."""
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise TypeError(f"{what} must be an nn.Module or a spec dict {{'name': str, 'args': dict}}, "
                        f"got {type(spec).__name__}")
    name, args = spec["name"], spec.get("args", {}) or {}
    if not isinstance(args, dict):
        raise TypeError(f"{what}['args'] must be a dict, got {type(args).__name__}")
    reg = _registry()
    if name in reg:
        return reg[name](**args)
    if ":" in name:
        if not trust_code:
            raise ValueError(f"{what} names user code {name!r}: it is imported only with trust_code=True "
                             f"(pass trust_code=True if you trust where this spec came from)")
        mod, _, qual = name.partition(":")
        obj = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            raise ValueError(f"{what} names {name!r}, which is not an nn.Module class")
        return obj(**args)
    raise ValueError(f"{what} names an unknown architecture {name!r}; built-in: {sorted(reg)}")


def _estimated_receptive_field(module: nn.Module) -> int:
    """A module's declared ``receptive_field``, else an estimate for plain conv stacks: 1 plus
    the sum of (kernel - 1) * dilation over its Conv2d layers (exact for stride-1 sequential
    convolutions; set a ``receptive_field`` attribute on your base otherwise)."""
    rf = getattr(module, "receptive_field", None)
    if rf is not None:
        return int(rf)
    total = 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            for k, d, s in zip(m.kernel_size, m.dilation, m.stride):
                if s != 1:
                    raise ValueError(f"cannot estimate the receptive field of {type(module).__name__} (strided "
                                     f"convolution): give it a receptive_field attribute")
            total += max((k - 1) * d for k, d in zip(m.kernel_size, m.dilation))
    return total


# ---- the pre-restore module ---------------------------------------------------------------------

class _PreActBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x)))): a pre-activation residual block (bases._ResBlock has
    no leading ReLU; the shipped PRM's weights were trained with this one)."""

    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.b(F.relu(self.a(F.relu(x))))


class _LocalUNet(nn.Module):
    """The PRM's ``local = "unet"`` correction network (runs at 1/scale resolution): a 3x3 conv to
    ``width`` channels and a residual block; per level a stride-2 3x3 conv doubling the channels,
    a residual block and a linear map of the image-mean of the coarsest features added back
    (an image-level cue); 2x2 transposed convs back up, each added to its skip and followed by
    a residual block; a 3x3 conv to 1 channel (zero at initialisation). Input sides are padded
    by replication to a multiple of 2^levels and cropped back."""

    def __init__(self, cin: int, width: int, levels: int):
        super().__init__()
        self.levels, self.multiple = levels, 2 ** levels
        self.inc, self.enc0 = nn.Conv2d(cin, width, 3, padding=1), _PreActBlock(width)
        self.down, self.enc, self.up, self.dec = (nn.ModuleList() for _ in range(4))
        c = width
        for _ in range(levels):
            self.down.append(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1))
            c *= 2
            self.enc.append(_PreActBlock(c))
        self.glob = nn.Linear(c, c)
        for _ in range(levels):
            self.up.append(nn.ConvTranspose2d(c, c // 2, 2, stride=2))
            c //= 2
            self.dec.append(_PreActBlock(c))
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _encode(self, x):
        """The encoder's features at every level (padded input; the last is the coarsest)."""
        H, W = x.shape[-2:]
        m = self.multiple
        x = self.enc0(self.inc(F.pad(x, (0, (-W) % m, 0, (-H) % m), mode="replicate")))
        feats = [x]
        for d, e in zip(self.down, self.enc):
            x = e(d(F.relu(x)))
            feats.append(x)
        return feats

    def forward(self, x, coarse_mean: Optional[torch.Tensor] = None):
        H, W = x.shape[-2:]
        skips = self._encode(x)
        x = skips.pop()
        mean = x.mean((2, 3)) if coarse_mean is None else coarse_mean
        x = x + self.glob(mean)[:, :, None, None]
        for u, d in zip(self.up, self.dec):
            x = d(u(F.relu(x)) + skips.pop())
        return self.out(F.relu(x))[..., :H, :W]

    def coarse_mean(self, x):
        """The image-mean of the coarsest features (the global cue; computed on the whole image
        by ``global_context`` so that tiles share it)."""
        return self._encode(x)[-1].mean((2, 3))

    @property
    def receptive_field(self) -> int:
        """An upper bound in input cells (each conv adds (k - 1) x its input's stride)."""
        rf = 1 + 2 + 4          # inc, enc0
        for l in range(self.levels):
            rf += 2 * 2 ** l + 4 * 2 ** (l + 1)       # down conv, block
        for l in reversed(range(self.levels)):
            rf += 1 * 2 ** (l + 1) + 4 * 2 ** l      # transposed conv, block
        return rf + 2             # out conv


@_register
class PreRestoreModule(nn.Module):
    """Pre-restore Module (PRM): a DCP-initialised, learned transmission and atmospheric light,
    J0 = recover(I, t, A, t0) through the fused op.

    The progressive framework is from "Progressive Dehazing with Inter and Intra Contrastive
    Learning" (ICASSP 2023); only its abstract is public, and every choice below is ours.

    Pipeline (the DCP part is a fixed prior computed under no_grad with the fused ops):

    1. ``global_context(I_full)``: dark channel (``patch``) and A_dcp = atmospheric light of
       the whole image (mean of the top ``top`` fraction, He et al. CVPR 2009); a global head
       (an MLP on 11 image statistics: A_dcp, the mean and standard deviation of I per channel,
       the mean and maximum of the dark channel) predicts a per-channel log correction a of A
       and a global log-exponent g of t. A = A_dcp * exp(a). Its last layer is zero: a = g = 0
       at initialisation. A is global, so tiles of one photo share it.
    2. t_dcp = clamp(guided_filter(luma(I), 1 - omega dark(I / A_dcp), r, eps, subsample),
       t0, 1): the DCP transmission, as :func:`fastdehaze.ops.dehaze_dcp` computes it.
    3. A local network (``layers`` 3x3 convolutions of ``width`` channels with dilations
       1, 2, 4, ... and ReLU, run on [I, t_dcp] average-pooled by ``scale``, its output
       upsampled bilinearly back to H x W; last layer zero) predicts delta, and
       t = t_dcp ** exp(delta + g). With t = exp(-beta d) this rescales beta d per pixel, keeps
       t in (0, 1] and keeps the edges of the guided filter. delta = g = 0 at initialisation,
       so J0 equals the DCP output (to rounding).
    4. J0 = :func:`fastdehaze.ops.recover` (I, t, A, t0), clamped to [0, 1] when ``clamp``;
       gradients flow into t and A (not into the DCP prior).

    Args:
        patch, omega, top, r, eps, t0: the DCP prior's parameters (see
            :func:`fastdehaze.ops.dehaze_dcp`; defaults 15, 0.95, 0.001, 60, 1e-3, 0.1).
        subsample: the guided filter's subsampling (1 = exact guided filter; > 1 = fast guided
            filter: tiled inference is then not exactly equal to untiled).
        width: channels of the local correction network (int >= 1, default 16).
        layers: with ``local = "dilated"``, its number of 3x3 convolutions (int >= 2, default 4;
            any other value with ``local = "unet"`` is a ValueError).
        local: the local network, "dilated" (the dilated convolutions of step 3, default) or
            "unet" (:class:`_LocalUNet`: a U-Net with an image-level cue shared by tiles).
        levels: with ``local = "unet"``, its number of down-sampling levels (int >= 1, default 1;
            width * 2**levels <= 1024; any other value than 1 with "dilated" is a ValueError).
        features: the local network's input, "basic" ([I, t_dcp]) or "rich" (also min_c I,
            max_c I and -log t_dcp).
        A_prior: the light the transmission prior divides by and A starts from: "dcp" (A_dcp,
            default) or "white" (A = 1, as RESIDE's indoor haze).
        scale: the average pooling factor of its input (int >= 1, default 4): the correction
            is computed at 1/scale resolution.
        learn_A: if False, A = A_dcp (no A correction; the global head still gives g).
        clamp: clamp J0 to [0, 1] (as the DCP does; default True).
        backend: backend of the fused ops ("auto", "reference", "cpu", "cuda", "triton").

    Shapes: I [B,3,H,W] floating in [0, 1], any H, W >= 1 (sizes not a multiple of ``scale``
    are padded by reflection for the local network only). forward returns J0 [B,3,H,W] in I's
    dtype, or (J0, t [B,1,H,W], A [B,3,1,1]) with ``return_all=True``.

    Attributes: ``receptive_field`` = scale * (1 + 2 sum(dilations) + 1) + patch + 4 r - 1 (the
    DCP transmission depends on I within patch + 4 r pixels: dark channel window, then the
    guided filter's two box filters of radius r, each 2 r + 1 wide); ``pad_multiple`` = scale
    (tile origins must be multiples of it for the pooled grid to line up); ``value_range``.

    Raises:
        TypeError / ValueError: a bad parameter (at construction) or input (naming it).
    """

    value_range = (0.0, 1.0)

    def __init__(self, patch: int = 15, omega: float = 0.95, top: float = 0.001, r: int = 60,
                 eps: float = 1e-3, t0: float = 0.1, subsample: int = 1, width: int = 16, layers: int = 4,
                 scale: int = 4, learn_A: bool = True, clamp: bool = True, backend: str = "auto",
                 local: str = "dilated", levels: int = 1, features: str = "basic", A_prior: str = "dcp"):
        super().__init__()
        self.patch = _int_arg(patch, "patch", 1)
        if patch % 2 == 0:
            raise ValueError(f"patch must be a positive odd integer, got {patch}")
        self.omega = _float_arg(omega, "omega", 0.0, 1.0)
        self.top = _float_arg(top, "top", 0.0, 1.0)
        self.r = _int_arg(r, "r", 0)
        self.eps = _float_arg(eps, "eps", 0.0, math.inf, lo_open=True)
        self.t0 = _float_arg(t0, "t0", 0.0, 1.0, lo_open=True)
        self.subsample = _int_arg(subsample, "subsample", 1)
        self.width = _int_arg(width, "width", 1)
        self.layers = _int_arg(layers, "layers", 2)
        self.scale = _int_arg(scale, "scale", 1)
        for name, v in (("learn_A", learn_A), ("clamp", clamp)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
        self.learn_A, self.clamp = learn_A, clamp
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.backend = backend
        for name, v, choices in (("local", local, ("dilated", "unet")), ("features", features, ("basic", "rich")),
                                 ("A_prior", A_prior, ("dcp", "white"))):
            if v not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {v!r}")
        self.local_kind, self.features, self.A_prior = local, features, A_prior
        self.levels = _int_arg(levels, "levels", 1)
        if local == "dilated" and self.levels != 1:
            raise ValueError(f"levels applies to local='unet' only (the dilated network's depth is `layers`), "
                             f"got levels={levels}")
        if local == "unet" and self.layers != 4:
            raise ValueError(f"layers applies to local='dilated' only (the U-Net's depth is `levels`), "
                             f"got layers={layers}")
        if local == "unet" and width * 2 ** self.levels > 1024:
            raise ValueError(f"width * 2**levels must be <= 1024 (the U-Net's coarsest channels), got width={width}, "
                             f"levels={levels}")
        cin = 4 if features == "basic" else 7
        if local == "unet":
            self.dilations = []
            self.local = _LocalUNet(cin, width, self.levels)
        else:
            self.dilations = [min(2 ** i, 8) for i in range(layers - 1)] + [1]
            convs = []
            for i, d in enumerate(self.dilations):
                cout = 1 if i == layers - 1 else width
                convs.append(nn.Conv2d(cin, cout, 3, padding=d, dilation=d))
                cin = cout
            self.local = nn.ModuleList(convs)
            nn.init.zeros_(self.local[-1].weight)
            nn.init.zeros_(self.local[-1].bias)
        self.head = nn.Sequential(nn.Linear(11, 16), nn.ReLU(), nn.Linear(16, 4))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def config(self) -> dict:
        return dict(patch=self.patch, omega=self.omega, top=self.top, r=self.r, eps=self.eps, t0=self.t0,
                    subsample=self.subsample, width=self.width, layers=self.layers, scale=self.scale,
                    learn_A=self.learn_A, clamp=self.clamp, backend=self.backend, local=self.local_kind,
                    levels=self.levels, features=self.features, A_prior=self.A_prior)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    @property
    def pad_multiple(self) -> int:
        return self.scale * (self.local.multiple if self.local_kind == "unet" else 1)

    @property
    def receptive_field(self) -> int:
        local = self.local.receptive_field if self.local_kind == "unet" else 1 + 2 * sum(self.dilations)  # cells
        dcp = self.patch + 4 * self.r
        if self.subsample > 1:  # coefficients on a grid of step s, radius round(r/s), bilinear
            rs = max(1, round(self.r / self.subsample))
            dcp = self.patch + 4 * rs * self.subsample + 2 * self.subsample
        return self.scale * (local + 1) + dcp - 1

    # -- global part --
    def global_context(self, I_full: torch.Tensor) -> dict:
        """A and the global exponent g from the whole image: {"A": [B,3,1,1], "g": [B,1,1,1],
        "A_dcp": [B,3,1,1] (the A the transmission prior uses: the DCP estimate, or 1 with
        ``A_prior = "white"``)}, A and g carrying the head's gradient; with ``local = "unet"``
        also "coarse" (the U-Net's image-level cue of the whole image, for tiles)."""
        ctx = self._global(I_full)
        if self.local_kind == "unet":
            t_prior = self.dcp_transmission(I_full, ctx["A_dcp"])
            ctx["coarse"] = self.local.coarse_mean(self._local_input(I_full, t_prior))
        return ctx

    def _global(self, I_full: torch.Tensor) -> dict:
        _check_image(I_full)
        with torch.no_grad():
            dark = ops.dark_channel(I_full, self.patch, backend=self.backend)
            A_dcp = ops.atmospheric_light(I_full, dark, self.top, self.patch, backend=self.backend)
            x = I_full.float()
            d = dark.float().flatten(1)
            std = x.flatten(2).std(2, correction=0) if x.shape[0] else x.new_zeros(0, 3)
            feats = torch.cat([A_dcp.float().flatten(1), x.mean((2, 3)), std,
                               d.mean(1, keepdim=True), d.amax(1, keepdim=True)], 1)
        out = self.head(feats.to(self.head[0].weight.dtype))
        a, g = out[:, :3], out[:, 3:4]
        A_base = torch.ones_like(A_dcp) if self.A_prior == "white" else A_dcp
        if self.learn_A:
            A = A_base * torch.exp(a).to(A_dcp.dtype).view(-1, 3, 1, 1)
        else:
            A = A_base + 0 * a.sum()  # keeps the head in the graph (DDP-friendly), adds nothing
        return {"A": A, "g": g.to(I_full.dtype).view(-1, 1, 1, 1), "A_dcp": A_base}

    # -- local part --
    def dcp_transmission(self, I: torch.Tensor, A_dcp: torch.Tensor) -> torch.Tensor:
        """t_dcp [B,1,H,W] in [t0, 1], no gradient (the DCP prior, as dehaze_dcp computes it,
        against the atmospheric light ``A_dcp``)."""
        with torch.no_grad():
            t_raw = ops.transmission(I, A_dcp.to(I.dtype), self.omega, self.patch, backend=self.backend)
            ct = torch.float64 if I.dtype == torch.float64 else torch.float32
            t = ops.guided_filter(_luma(I.to(ct)), t_raw.to(ct), self.r, self.eps, self.subsample,
                                  backend=self.backend)
            return t.clamp(self.t0, 1.0).to(I.dtype)

    def _local_input(self, I: torch.Tensor, t_dcp: torch.Tensor) -> torch.Tensor:
        """The local network's input at 1/scale resolution: [I, t_dcp] ("basic") or [I, t_dcp,
        min_c I, max_c I, -log t_dcp] ("rich"), average-pooled by ``scale``."""
        w = self.local.inc.weight if self.local_kind == "unet" else self.local[0].weight
        parts = [I, t_dcp]
        if self.features == "rich":
            parts += [I.amin(1, keepdim=True), I.amax(1, keepdim=True), -torch.log(t_dcp)]
        x = torch.cat(parts, 1).to(w.dtype)
        if self.scale > 1:
            x, _, _ = _pad_to(x, self.scale)
            x = F.avg_pool2d(x, self.scale)
        return x

    def correction(self, I: torch.Tensor, t_dcp: torch.Tensor, coarse: Optional[torch.Tensor] = None) -> torch.Tensor:
        """delta [B,1,H,W] of the local network (zero at initialisation)."""
        H, W = I.shape[-2:]
        x = self._local_input(I, t_dcp)
        if self.local_kind == "unet":
            x = self.local(x, coarse)
        else:
            for i, conv in enumerate(self.local):
                x = conv(x)
                if i < len(self.local) - 1:
                    x = F.relu(x)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)[..., :H, :W]
        return x

    def forward(self, I: torch.Tensor, context: Optional[dict] = None, return_all: bool = False):
        _check_image(I)
        ctx = self._global(I) if context is None else context
        A, g, A_dcp = ctx["A"], ctx["g"], ctx["A_dcp"]
        t_dcp = self.dcp_transmission(I, A_dcp)
        delta = self.correction(I, t_dcp, ctx.get("coarse")).to(I.dtype)
        t = torch.pow(t_dcp, torch.exp(delta + g))
        J0 = ops.recover(I, t, A.to(I.dtype), self.t0, clamp=(0.0, 1.0) if self.clamp else None,
                         backend=self.backend)
        return (J0, t, A) if return_all else J0


# ---- the progressive dehazer --------------------------------------------------------------------

@_register
class ProgressiveDehazer(nn.Module):
    """PRM + base network (the ICASSP 2023 progressive framework; only its abstract is public,
    every architecture choice here is ours).

    J0 = prm(I); then J = base(x), with x chosen by ``base_input``:

    * ``"j0"`` (default): x = J0. The base sees only the first estimate; a residual base
      initialised at the identity keeps J = J0 (= the DCP output with the default PRM) at step 0.
    * ``"i_j0"``: x = adapter([I, J0]), a learned 1x1 convolution from the 6 channels [I, J0]
      to 3, initialised to pass J0 through; the base can thus draw on the hazy input too.

    ``base`` is any ``nn.Module`` mapping [B,3,H,W] -> [B,3,H,W] (in [0, 1]), or a spec dict
    ``{"name": "UNet", "args": {...}}`` of a built-in architecture (``fastdehaze.nn.ARCHITECTURES``)
    or ``{"name": "pkg.mod:Class", ...}`` (imported only with ``trust_code=True``). Sizes the base
    cannot take (its ``pad_multiple`` attribute, if any; 1 otherwise) are padded by reflection
    (replication for sides too short to reflect) and cropped back here, so any H, W >= 1 works.

    Args:
        base: the refining network (module or spec dict).
        prm: a :class:`PreRestoreModule` (or spec dict); None builds ``PreRestoreModule()``.
        base_input: "j0" or "i_j0" (see above).
        trust_code: allow a "module:Class" name in ``base``/``prm`` specs (not part of config()).

    forward(I, return_j0=False, context=None): I [B,3,H,W] floating in [0, 1]; returns J
    [B,3,H,W], or ProgressiveOutput(J, J0) with ``return_j0=True`` (in train and eval mode
    alike). ``context`` from :meth:`global_context` of the whole image (for tiles).

    Attributes: ``receptive_field`` = prm's + base's - 1 (a base without the attribute is
    estimated from its Conv2d layers, see ``_estimated_receptive_field``), ``pad_multiple`` =
    lcm of the PRM's and the base's, ``value_range``.

    Raises:
        TypeError / ValueError: bad arguments or input (naming them).
    """

    value_range = (0.0, 1.0)

    def __init__(self, base, prm=None, base_input: str = "j0", *, trust_code: bool = False):
        super().__init__()
        self.base = _build(base, "base", trust_code)
        self.prm = PreRestoreModule() if prm is None else _build(prm, "prm", trust_code)
        if base_input not in ("j0", "i_j0"):
            raise ValueError(f"base_input must be 'j0' or 'i_j0', got {base_input!r}")
        self.base_input = base_input
        if base_input == "i_j0":
            self.adapter = nn.Conv2d(6, 3, 1)
            with torch.no_grad():
                self.adapter.weight.zero_()
                self.adapter.bias.zero_()
                for c in range(3):
                    self.adapter.weight[c, 3 + c] = 1.0
        else:
            self.adapter = None

    def config(self) -> dict:
        return {"base": _spec_of(self.base), "prm": _spec_of(self.prm), "base_input": self.base_input}

    @property
    def base_pad_multiple(self) -> int:
        return int(getattr(self.base, "pad_multiple", 1) or 1)

    @property
    def pad_multiple(self) -> int:
        return math.lcm(int(getattr(self.prm, "pad_multiple", 1)), self.base_pad_multiple)

    @property
    def receptive_field(self) -> int:
        return _estimated_receptive_field(self.prm) + _estimated_receptive_field(self.base) - 1

    def global_context(self, I_full: torch.Tensor) -> dict:
        """The PRM's context and the base's (if it has one), as {"prm": ..., "base": ...}."""
        ctx = {"prm": self.prm.global_context(I_full) if hasattr(self.prm, "global_context") else {}}
        if hasattr(self.base, "global_context"):
            # the base sees J0 (or the adapter's mix), so its context is taken of that image
            J0 = self.prm(I_full, context=ctx["prm"])
            ctx["base"] = self.base.global_context(self._pad_base(self._base_in(I_full, J0))[0])
        return ctx

    def _base_in(self, I, J0):
        if self.adapter is None:
            return J0
        return self.adapter(torch.cat([I, J0], 1).to(self.adapter.weight.dtype)).to(J0.dtype)

    def _pad_base(self, x):
        return _pad_to(x, self.base_pad_multiple)

    def forward(self, I: torch.Tensor, return_j0: bool = False, context: Optional[dict] = None):
        _check_image(I)
        check_dtype(I, self)
        if not isinstance(return_j0, bool):
            raise TypeError(f"return_j0 must be a bool, got {type(return_j0).__name__}")
        ctx = {} if context is None else context
        if "prm" in ctx:
            J0 = self.prm(I, context=ctx["prm"])
        else:
            J0 = self.prm(I)
        x, H, W = self._pad_base(self._base_in(I, J0))
        if "base" in ctx:
            J = self.base(x, context=ctx["base"])
        else:
            J = self.base(x)
        J = J[..., :H, :W]
        return ProgressiveOutput(J, J0) if return_j0 else J


# ---- tiled inference ----------------------------------------------------------------------------

def tiled_forward(model: nn.Module, I: torch.Tensor, tile: int, halo: Optional[int] = None,
                  context: Optional[dict] = None, out: Optional[torch.Tensor] = None, progress=None):
    """Run ``model`` on overlapping tiles of I, streaming tile by tile, equal to ``model(I)``.

    Works for any model following the model contract: ``global_context(I_full)`` (optional:
    anything global, computed once here on the whole image and passed to every tile as
    ``context=``), ``receptive_field`` and ``pad_multiple`` attributes (1 if absent). Each tile
    of ``tile`` x ``tile`` output pixels is computed from the tile grown by ``halo`` pixels on
    every side (clipped at the image border), with its origin moved down to a multiple of
    ``pad_multiple`` so that pooling grids line up with the untiled run.

    Args:
        model: the model (called as ``model(x, context=ctx)`` when it has ``global_context``,
            else ``model(x)``).
        I: [B,C,H,W] floating input.
        tile: output tile side in pixels, rounded up to a multiple of ``pad_multiple``.
        halo: pixels of context on each side (default ``receptive_field // 2 + 1``).
        context: a precomputed global context (default: ``model.global_context(I)``).
        out: optional preallocated output [B,C_out,H,W] (e.g. on another device).
        progress: optional callable ``progress(done, total)``.

    Returns:
        The output [B,C_out,H,W] (``out`` when given). Equal to the untiled output to rounding
        when ``halo >= receptive_field // 2 + 1`` (tested within 1/255 for the built-in models).

    Raises:
        TypeError / ValueError: bad tile/halo or input.
    """
    if not isinstance(I, torch.Tensor) or I.dim() != 4:
        raise ValueError(f"I must be a [B,C,H,W] tensor, got {getattr(I, 'shape', type(I).__name__)}")
    tile = _int_arg(tile, "tile", 1)
    m = int(getattr(model, "pad_multiple", 1) or 1)
    tile = -(-tile // m) * m
    if halo is None:
        rf = getattr(model, "receptive_field", None)
        if rf is None:
            raise ValueError("halo must be given for a model without a receptive_field attribute")
        halo = int(rf) // 2 + 1
    halo = _int_arg(halo, "halo", 0)
    has_ctx = hasattr(model, "global_context")
    if has_ctx and context is None:
        context = model.global_context(I)
    H, W = I.shape[-2:]
    ys, xs = range(0, H, tile), range(0, W, tile)
    total, done = len(ys) * len(xs), 0
    for y0 in ys:
        y1 = min(y0 + tile, H)
        ey0 = max(0, y0 - halo) // m * m
        ey1 = min(H, y1 + halo)
        for x0 in xs:
            x1 = min(x0 + tile, W)
            ex0 = max(0, x0 - halo) // m * m
            ex1 = min(W, x1 + halo)
            piece = I[..., ey0:ey1, ex0:ex1]
            res = model(piece, context=context) if has_ctx else model(piece)
            if out is None:
                out = torch.empty((I.shape[0], res.shape[1], H, W), dtype=res.dtype, device=res.device)
            out[..., y0:y1, x0:x1] = res[..., y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]
            done += 1
            if progress is not None:
                progress(done, total)
    return out
