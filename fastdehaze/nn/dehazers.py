"""Training-free dehazers as drop-in modules.

:class:`DarkChannelDehazer` is the dark channel prior of He, Sun, Tang ("Single Image Haze Removal
Using Dark Channel Prior", CVPR 2009 / TPAMI 2011) with the transmission refined by the guided
filter (He, Sun, Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013), i.e.
:func:`fastdehaze.ops.dehaze_dcp`, with SPEC section 2's defaults. :func:`dehaze_tiled` runs the
same pipeline on a large image tile by tile in bounded memory and gives the untiled result.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import ops
from ..reference import dcp as _ref_dcp

__all__ = ["DarkChannelDehazer", "dehaze_tiled", "tile_halo"]


def tile_halo(patch: int, r: int) -> int:
    """Halo (pixels on each side of a tile) that makes tiled DCP equal to untiled DCP.

    J at a pixel depends on I within ``patch // 2`` (dark channel of I / A) plus ``2 r`` (the
    guided filter's two box filters of radius r): the halo is ``patch // 2 + 2 r + 1``.
    """
    return patch // 2 + 2 * r + 1


def _check_params(patch, omega, top, r, eps, t0, tile=None):
    if isinstance(patch, bool) or not isinstance(patch, int):
        raise TypeError(f"patch must be an int, got {type(patch).__name__}")
    if patch <= 0 or patch % 2 == 0:
        raise ValueError(f"patch must be a positive odd integer, got {patch}")
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"r must be an int, got {type(r).__name__}")
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    for name, v, lo, hi, lo_open in (("omega", omega, 0.0, 1.0, False), ("top", top, 0.0, 1.0, False),
                                     ("eps", eps, 0.0, math.inf, True), ("t0", t0, 0.0, 1.0, True)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(v).__name__}")
        if not (lo < v <= hi if lo_open else lo <= v <= hi):
            raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, int):
            raise TypeError(f"tile must be an int or None, got {type(tile).__name__}")
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")


class DarkChannelDehazer(nn.Module):
    """Dark-channel-prior dehazing (He et al., CVPR 2009) with guided-filter refinement (ECCV 2010).

    forward(I) -> J, or (J, t, A) with ``return_all=True``: see :func:`fastdehaze.ops.dehaze_dcp`.
    No parameters to learn, not differentiable (the outputs do not require grad).

    Args:
        patch: dark-channel window, positive odd int (default 15).
        omega: haze kept for depth perception, in [0, 1] (default 0.95).
        top: fraction of the brightest dark-channel pixels averaged for A, in [0, 1] (default 0.001).
        r: guided-filter radius in pixels, int >= 0 (default 60).
        eps: guided-filter regulariser, > 0 (default 1e-3, for values in [0, 1]).
        t0: lower bound of the refined transmission, in (0, 1] (default 0.1).
        backend: "auto", "reference", "cpu", "cuda" or "triton" (passed to every op).
        tile: None (default) to process whole images; an int to process images whose height or
            width exceeds it in tiles of ``tile`` x ``tile`` pixels (plus halos, see
            :func:`dehaze_tiled`), for bounded memory on large photos. The result equals the
            untiled one to rounding.

    Shapes: I [B,C,H,W] (C = 3 for colour; a 1-channel image uses itself as guide), floating,
    values in [0, 1] as stored (sRGB code values, as in all DCP code); J [B,C,H,W] in I's dtype
    clamped to [0, 1]; t [B,1,H,W] in [t0, 1]; A [B,C,1,1].

    Raises:
        TypeError / ValueError: a bad parameter (here, at construction) or input (naming it).
        RuntimeError: the backend is unavailable for the input's device.
    """

    def __init__(self, patch: int = 15, omega: float = 0.95, top: float = 0.001, r: int = 60,
                 eps: float = 1e-3, t0: float = 0.1, *, backend: str = "auto", tile: Optional[int] = None):
        super().__init__()
        _check_params(patch, omega, top, r, eps, t0, tile)
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.patch, self.omega, self.top, self.r, self.eps, self.t0 = patch, float(omega), float(top), r, float(eps), float(t0)
        self.backend = backend
        self.tile = tile

    def extra_repr(self) -> str:
        s = (f"patch={self.patch}, omega={self.omega}, top={self.top}, r={self.r}, eps={self.eps}, "
             f"t0={self.t0}, backend={self.backend!r}")
        return s + (f", tile={self.tile}" if self.tile is not None else "")

    def forward(self, I: torch.Tensor, return_all: bool = False):
        if self.tile is not None and isinstance(I, torch.Tensor) and I.dim() == 4 and max(I.shape[-2:]) > self.tile:
            return dehaze_tiled(I, self.patch, self.omega, self.top, self.r, self.eps, self.t0, tile=self.tile,
                                return_all=return_all, backend=self.backend)
        return ops.dehaze_dcp(I, self.patch, self.omega, self.top, self.r, self.eps, self.t0,
                              return_all=return_all, backend=self.backend)


# ---- tiled DCP for large images -----------------------------------------------------------------

def _top_k_indices(d: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k largest values of the 1-D ``d`` (NaN ranks largest; ties: lower index
    first): the same set as a stable descending sort, found with topk + a threshold (no full sort)."""
    isn = torch.isnan(d)
    nan_idx = torch.nonzero(isn).flatten()[:k]
    rest = k - nan_idx.numel()
    if rest <= 0:
        return nan_idx
    dd = torch.where(isn, torch.full_like(d, -math.inf), d)
    thr = torch.topk(dd, rest, sorted=False).values.min()
    gt = torch.nonzero(dd > thr).flatten()
    eq = torch.nonzero(dd == thr).flatten()[: rest - gt.numel()]
    return torch.cat([nan_idx, gt, eq])


def _spans(n: int, tile: int):
    return [(s, min(s + tile, n)) for s in range(0, n, tile)]


def dehaze_tiled(I: torch.Tensor, patch: int = 15, omega: float = 0.95, top: float = 0.001, r: int = 60,
                 eps: float = 1e-3, t0: float = 0.1, *, tile: int = 2048, return_all: bool = False,
                 backend: str = "auto", device=None, dtype: Optional[torch.dtype] = None,
                 out_bits: Optional[int] = None, progress=None):
    """DCP dehazing of a large image in tiles, in bounded memory, equal to the untiled
    :func:`fastdehaze.ops.dehaze_dcp` to rounding (tested to 1e-5).

    Two passes per image: (1) the dark channel of the whole image, tile by tile with a halo of
    ``patch // 2``, then A from it (the mean of I over the top ``top`` fraction, ranked as
    :func:`fastdehaze.ops.atmospheric_light` ranks: NaN largest, ties by lower index); (2) for
    each ``tile`` x ``tile`` tile with a halo of :func:`tile_halo` pixels (clipped at the image
    border): transmission, guided filter with the BT.601 luma guide, clamp to [t0, 1], recovery
    with J clamped to [0, 1]; the tile's inner part is kept. Memory: the source image, one
    [H, W] dark-channel map of the compute dtype, the outputs, and one tile's working set.

    Args:
        I: [B,C,H,W] image, floating with values in [0, 1], or uint8 / uint16 (divided by 255 /
            65535 tile by tile, so a large 8-bit photo never exists in float as a whole). It
            stays on its device (e.g. CPU memory); tiles are moved to ``device``.
        patch, omega, top, r, eps, t0: as :func:`fastdehaze.ops.dehaze_dcp`.
        tile: tile size in pixels (>= 1). An image with both sides <= tile is done in one call of
            dehaze_dcp.
        return_all: also return t [B,1,H,W] and A [B,C,1,1] (A in the compute dtype).
        backend: "auto", "reference", "cpu", "cuda" or "triton", passed to every op.
        device: where tiles are computed (default: I's device).
        dtype: compute dtype (default: I's dtype for floating I, float32 for integer I).
        out_bits: None to return J (and t) as floating tensors of the compute dtype on I's
            device; 8 or 16 to return them quantised to uint8 / uint16 (see
            :func:`fastdehaze.io.quantize`: rounded and clamped before the cast).
        progress: optional callable ``progress(done_tiles, total_tiles)``.

    Returns:
        J [B,C,H,W], or (J, t, A).

    Raises:
        TypeError / ValueError: a bad argument (naming it).
    """
    if not isinstance(I, torch.Tensor):
        raise TypeError(f"I must be a torch.Tensor, got {type(I).__name__}")
    if I.dim() != 4:
        raise ValueError(f"I must have 4 dims [B,C,H,W], got shape {tuple(I.shape)}")
    _check_params(patch, omega, top, r, eps, t0, tile)
    if out_bits not in (None, 8, 16):
        raise ValueError(f"out_bits must be None, 8 or 16, got {out_bits!r}")
    if I.dtype == torch.uint8:
        scale = 255.0
    elif I.dtype == torch.uint16:
        scale = 65535.0
    elif I.is_floating_point():
        scale = None
    else:
        raise TypeError(f"I must be floating, uint8 or uint16, got {I.dtype}")
    device = I.device if device is None else torch.device(device)
    cdt = dtype or (I.dtype if scale is None else torch.float32)
    B, C, H, W = I.shape

    def load(src):
        x = src.to(device)
        x = x.to(cdt) if scale is None else x.to(torch.float32).div_(scale).to(cdt)
        return x

    def emit(x):
        if out_bits is not None:
            from ..io import quantize
            return quantize(x, out_bits).to(I.device)
        return x.to(I.device)

    out_dt = cdt if out_bits is None else (torch.uint8 if out_bits == 8 else torch.uint16)
    J_out = torch.empty((B, C, H, W), dtype=out_dt, device=I.device)
    t_out = torch.empty((B, 1, H, W), dtype=out_dt, device=I.device) if return_all else None
    A_out = torch.empty((B, C, 1, 1), dtype=cdt, device=device)
    if B == 0 or H == 0 or W == 0:
        return (J_out, t_out, A_out) if return_all else J_out

    if max(H, W) <= tile:  # one piece: the fused pipeline as it is
        for b in range(B):
            J, t, A = ops.dehaze_dcp(load(I[b:b + 1]), patch, omega, top, r, eps, t0, return_all=True,
                                     backend=backend)
            J_out[b:b + 1] = emit(J)
            if return_all:
                t_out[b:b + 1] = emit(t)
            A_out[b:b + 1] = A.to(cdt)
            if progress:
                progress(b + 1, B)
        return (J_out, t_out, A_out) if return_all else J_out

    ys, xs = _spans(H, tile), _spans(W, tile)
    total, done = B * len(ys) * len(xs) * 2, 0
    hd, halo = patch // 2, tile_halo(patch, r)
    for b in range(B):
        src = I[b:b + 1]
        # pass 1: dark channel of the whole image (exact with a halo of patch // 2), then A
        dark = torch.empty((H, W), dtype=cdt, device=device)
        for y0, y1 in ys:
            for x0, x1 in xs:
                Y0, Y1, X0, X1 = max(0, y0 - hd), min(H, y1 + hd), max(0, x0 - hd), min(W, x1 + hd)
                d = ops.dark_channel(load(src[:, :, Y0:Y1, X0:X1]), patch, backend=backend)
                dark[y0:y1, x0:x1] = d[0, 0, y0 - Y0:y1 - Y0, x0 - X0:x1 - X0]
                done += 1
                if progress:
                    progress(done, total)
        idx = _top_k_indices(dark.reshape(-1), _ref_dcp.top_k_count(H, W, top))
        del dark
        flat = src.reshape(C, H * W)
        A = load(flat[:, idx.to(I.device)]).mean(dim=1).reshape(1, C, 1, 1)
        A_out[b:b + 1] = A
        # pass 2: transmission, guided filter, recovery, tile by tile with a halo of tile_halo()
        for y0, y1 in ys:
            for x0, x1 in xs:
                Y0, Y1, X0, X1 = max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)
                x = load(src[:, :, Y0:Y1, X0:X1])
                t_raw = ops.transmission(x, A.to(x.dtype), omega, patch, backend=backend).to(cdt)
                guide = _ref_dcp.luma(x)
                t = torch.clamp(ops.guided_filter(guide, t_raw, r, float(eps), backend=backend), t0, 1.0)
                J = ops.recover(x, t.to(x.dtype), A.to(x.dtype), t0, clamp=(0.0, 1.0), backend=backend)
                sy, sx = slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0)
                J_out[b:b + 1, :, y0:y1, x0:x1] = emit(J[:, :, sy, sx])
                if return_all:
                    t_out[b:b + 1, :, y0:y1, x0:x1] = emit(t[:, :, sy, sx])
                done += 1
                if progress:
                    progress(done, total)
    return (J_out, t_out, A_out) if return_all else J_out
