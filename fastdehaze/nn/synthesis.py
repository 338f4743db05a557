"""On-device haze synthesis for training batches (SPEC section 6; RESIDE, Li et al., TIP 2019).

    I = J t + A (1 - t),    t = exp(-beta d)

:class:`HazeSynthesis` draws A and beta per image from the RESIDE ranges of a preset (or ranges
of your own) with a ``torch.Generator`` and hazes a batch of clear images through the fused
``fastdehaze.ops.synthesize_haze`` (the depth + beta path: one pass, t never written to memory)
or, given a transmission map, through its t path.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from .. import ops

__all__ = ["HazeSynthesis", "HazeSample", "HAZE_PRESETS"]

#: RESIDE's ranges (Li et al., "Benchmarking Single Image Dehazing and Beyond", TIP 2019):
#: "its" (indoor training set) and "ots" (outdoor), for depth normalised per image.
HAZE_PRESETS = {
    "its": {"A": tuple(ops.RESIDE_PRESETS["indoor"]["A"]), "beta": tuple(ops.RESIDE_PRESETS["indoor"]["beta"])},
    "ots": {"A": tuple(ops.RESIDE_PRESETS["outdoor"]["A"]), "beta": tuple(ops.RESIDE_PRESETS["outdoor"]["beta"])},
}
_PRESET_ALIASES = {"its": "its", "indoor": "its", "ots": "ots", "outdoor": "ots"}
_DEPTH_KINDS = {"normalized": "normalized", "normalised": "normalized", "metres": "metres", "meters": "metres"}


class HazeSample(NamedTuple):
    """What :meth:`HazeSynthesis.forward` returns.

    hazy: [B,C,H,W] in J's dtype. t: the transmission [B,1,H,W] in J's dtype (the given t on the
    t path; ``None`` on the depth path when the module was built with ``return_t=False``).
    A: [B,1,1,1] (grey) or [B,C,1,1] (per-channel), float32 (float64 for a float64 J).
    beta: [B,1,1,1] like A, or ``None`` on the t path (no beta is used there).
    """
    hazy: torch.Tensor
    t: Optional[torch.Tensor]
    A: torch.Tensor
    beta: Optional[torch.Tensor]


def _range_arg(v, name: str, *, positive: bool):
    try:
        lo, hi = v
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (lo, hi) pair of numbers, got {v!r}") from None
    if isinstance(v[0], bool) or isinstance(v[1], bool):
        raise ValueError(f"{name} must be a (lo, hi) pair of numbers, got {v!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if positive and lo <= 0:
        raise ValueError(f"{name} must be > 0 (an atmospheric light A <= 0 is not physical), got {v!r}")
    if not positive and lo < 0:
        raise ValueError(f"{name} must be >= 0 (a negative scattering coefficient is not physical), got {v!r}")
    if lo > hi:
        raise ValueError(f"{name} must have lo <= hi, got {v!r}")
    return lo, hi


class HazeSynthesis(nn.Module):
    """Haze a batch of clear images with the atmospheric scattering model, A and beta drawn per
    image (RESIDE's synthesis, Li et al., TIP 2019; SPEC sections 1 and 6).

        hazy = J t + A (1 - t),    t = exp(-beta d)

    Args:
        preset: "its" (RESIDE indoor: A in [0.7, 1.0], beta in [0.6, 1.8]) or "ots" (outdoor:
            A in [0.8, 1.0], beta in [0.04, 0.2]); "indoor"/"outdoor" are aliases. The ranges
            are RESIDE's for depth normalised per image (``depth_kind="normalized"``).
        A_range: ``(lo, hi)`` overriding the preset's A range; 0 < lo <= hi, finite.
        beta_range: ``(lo, hi)`` overriding the preset's beta range; 0 <= lo <= hi, finite.
        per_channel_A: False (default, RESIDE): one grey A per image, [B,1,1,1]. True: one A per
            image and channel, each drawn from ``A_range`` ([B,C,1,1], a tinted airlight).
        depth_kind: how ``depth`` is read. "normalized" (default): each image's depth is divided
            by its own maximum so that d is in [0, 1], as RESIDE's normalised depth maps (and the
            preset betas are for that scale); an all-zero map stays 0 (no haze). "metres": used
            as given, so beta is per metre (RESIDE's betas are then far too weak or strong for a
            real scene depth: pass a ``beta_range`` in 1/m). A disparity (inverse depth) map is
            not depth: it would make near objects the haziest; convert it first (e.g. d = 1 /
            disparity, or ``python3 -m fastdehaze synth --depth-kind disparity``).
        return_t: on the depth path, also compute t = exp(-beta d) for the sample (one more
            fused pass, ``fastdehaze.ops.transmission_from_depth``). False leaves ``t=None``
            and hazes in a single pass.
        backend: passed to the fused ops ("auto", "reference", "cpu", "cuda", "triton").

    ``forward(J, depth=None, *, t=None, generator=None) -> HazeSample``:
        J: clear images [B,C,H,W] (C >= 1, B may be 0), float16/bfloat16/float32/float64 in
            [0, 1], on any device; every output is on J's device.
        depth: [B,1,H,W] (or [B,C,H,W]) floating, >= 0 and finite (no NaN / inf), same B, H,
            W as J.
        t: instead of depth, the transmission [B,1,H,W] or [B,C,H,W] in [0, 1] (a value
            outside, or NaN, is refused: I would leave the range spanned by J and A).
        generator: a ``torch.Generator`` for the draws (default: torch's global CPU RNG). The
            draws are made on the generator's device (CPU for the default) in float64 and then
            moved to J's device, so a CPU generator with the same seed gives the same A and
            beta, hence the same batch, on every run and every device. Per image, A is drawn
            first (1 or C values), then beta; both are always drawn (on the t path too), so a
            seed gives the same A on either path.

    Gradients flow to J and to the given t (and to depth, through exp(-beta d)); A and beta are
    drawn constants. Returns :class:`HazeSample`.

    Raises:
        ValueError: an unknown preset or depth_kind (naming it; "disparity" with the reason);
            a bad ``A_range``/``beta_range``; neither or both of depth and t; depth/t not 4-d or
            not matching J's B, H, W; J not 4-d; negative or non-finite (NaN / inf) depth; a t
            outside [0, 1] or NaN. (These checks read one flag back from the device.)
        TypeError: J, depth or t not a floating tensor; generator not a torch.Generator.
    """

    def __init__(self, preset: str = "its", *, A_range=None, beta_range=None, per_channel_A: bool = False,
                 depth_kind: str = "normalized", return_t: bool = True, backend: str = "auto"):
        super().__init__()
        if not isinstance(preset, str) or preset.lower() not in _PRESET_ALIASES:
            raise ValueError(f"preset must be one of 'its', 'ots' (or 'indoor', 'outdoor'), got {preset!r}")
        self.preset = _PRESET_ALIASES[preset.lower()]
        p = HAZE_PRESETS[self.preset]
        self.A_range = _range_arg(p["A"] if A_range is None else A_range, "A_range", positive=True)
        self.beta_range = _range_arg(p["beta"] if beta_range is None else beta_range, "beta_range", positive=False)
        if not isinstance(depth_kind, str) or depth_kind.lower() not in _DEPTH_KINDS:
            why = (" (a disparity map is inverse depth, not depth: convert it to depth first, e.g. "
                   "1 / disparity, or use `fastdehaze synth --depth-kind disparity`)"
                   if isinstance(depth_kind, str) and depth_kind.lower() == "disparity" else "")
            raise ValueError(f"depth_kind must be 'normalized' or 'metres', got {depth_kind!r}{why}")
        self.depth_kind = _DEPTH_KINDS[depth_kind.lower()]
        self.per_channel_A = bool(per_channel_A)
        self.return_t = bool(return_t)
        self.backend = backend

    def extra_repr(self) -> str:
        return (f"preset={self.preset!r}, A_range={self.A_range}, beta_range={self.beta_range}, "
                f"per_channel_A={self.per_channel_A}, depth_kind={self.depth_kind!r}")

    def draw(self, B: int, C: int = 3, generator: Optional[torch.Generator] = None):
        """The (A, beta) float64 CPU draws of a batch: A [B,1|C,1,1], beta [B,1,1,1]."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        gdev = generator.device if generator is not None else torch.device("cpu")
        CA = C if self.per_channel_A else 1
        # one draw of (CA + 1) numbers per image, so image i's values do not depend on CA's order
        u = torch.rand(B, CA + 1, generator=generator, device=gdev, dtype=torch.float64).cpu()
        (alo, ahi), (blo, bhi) = self.A_range, self.beta_range
        A = alo + u[:, :CA] * (ahi - alo)
        beta = blo + u[:, CA:] * (bhi - blo)
        return A.view(B, CA, 1, 1), beta.view(B, 1, 1, 1)

    def forward(self, J, depth=None, *, t=None, generator: Optional[torch.Generator] = None) -> HazeSample:
        if not isinstance(J, torch.Tensor) or not J.is_floating_point():
            raise TypeError(f"J must be a floating-point tensor [B,C,H,W] in [0, 1], got "
                            f"{J.dtype if isinstance(J, torch.Tensor) else type(J).__name__}")
        if J.dim() != 4:
            raise ValueError(f"J must be 4-d [B,C,H,W], got shape {tuple(J.shape)}")
        if depth is None and t is None:
            raise ValueError("HazeSynthesis: give depth (a depth map) or t= (a transmission map); "
                             "neither was given (no depth is ever invented)")
        if depth is not None and t is not None:
            raise ValueError("HazeSynthesis: give depth or t=, not both")
        for name, m in (("depth", depth), ("t", t)):
            if m is None:
                continue
            if not isinstance(m, torch.Tensor) or not m.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor [B,1,H,W], got "
                                f"{m.dtype if isinstance(m, torch.Tensor) else type(m).__name__}")
            if (m.dim() != 4 or m.shape[0] != J.shape[0] or m.shape[2:] != J.shape[2:]
                    or m.shape[1] not in (1, J.shape[1])):
                raise ValueError(f"{name} must be [B,1,H,W] or [B,C,H,W] matching J {tuple(J.shape)}, "
                                 f"got shape {tuple(m.shape)}")
            with torch.no_grad():
                if name == "depth":
                    if not bool(torch.isfinite(m).all()):
                        raise ValueError("depth must be finite (found NaN or inf values)")
                elif not bool(((m >= 0) & (m <= 1)).all()):
                    lo, hi = float(m.nan_to_num(0.5).amin()), float(m.nan_to_num(0.5).amax())
                    nan = bool(torch.isnan(m).any())
                    raise ValueError("t must be a transmission in [0, 1], found "
                                     + ("NaN" if nan else f"values in [{lo:g}, {hi:g}]"))
        B, C = J.shape[:2]
        A64, beta64 = self.draw(B, C, generator)
        pdt = torch.float64 if J.dtype == torch.float64 else torch.float32
        A = A64.to(device=J.device, dtype=pdt)
        if t is not None:
            hazy = ops.synthesize_haze(J, A, t=t.to(J.device), backend=self.backend)
            return HazeSample(hazy, t, A, None)
        beta = beta64.to(device=J.device, dtype=pdt)
        d = depth.to(J.device)
        if self.depth_kind == "normalized" and d.numel():
            # per-image max (differentiated); an all-zero map stays 0 (tiny avoids 0/0)
            m = d.amax(dim=(1, 2, 3), keepdim=True)
            d = d / m.clamp_min(torch.finfo(d.dtype).tiny)
        hazy = ops.synthesize_haze(J, A, depth=d, beta=beta, backend=self.backend)
        tt = ops.transmission_from_depth(d.to(J.dtype), beta, backend=self.backend) if self.return_t else None
        return HazeSample(hazy, tt, A, beta)
