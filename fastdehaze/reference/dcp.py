"""Reference dark channel prior (He, Sun, Tang, "Single Image Haze Removal Using Dark Channel
Prior", CVPR 2009 / TPAMI 2011) and DCP dehazing with guided-filter refinement (He, Sun, Tang,
"Guided Image Filtering", ECCV 2010 / TPAMI 2013). SPEC section 2.

Plain PyTorch, the definition every fused backend is tested against in float64. Half inputs
are computed in float32 and returned in their dtype.

* ``dark_channel`` / ``bright_channel``: min (max) over channels, then over the patch x patch
  window clipped at the border (+inf / -inf padding). NaN anywhere in the window gives NaN.
  Gradient: the whole output gradient goes to ONE input element, the extremum met first when
  scanning the window row-major and, within a pixel, the lowest channel (NaN counts as the
  extremum; the first NaN wins).
* ``atmospheric_light``: mean of I over the k = max(1, floor(top H W)) pixels with the largest
  dark value (stable: ties by lower flat index; NaN ranks largest).
* ``transmission``: 1 - omega * dark_channel(I / A), A guarded: each channel of A is clamped to at
  least ``A_MIN`` (1e-6) before dividing, so A = 0 gives finite values (I = 0 there gives t = 1).
* ``dehaze_dcp``: the whole pipeline (dark -> A -> t~ -> guided filter with the BT.601 luma
  guide -> clamp [t0, 1] -> recover, J clamped to [0, 1]).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Lower bound applied to each channel of A before I / A (the A = 0 guard of ``transmission``).
A_MIN = 1e-6


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _better(a: torch.Tensor, b: torch.Tensor, is_max: bool) -> torch.Tensor:
    """Whether a strictly beats b (NaN beats any number; equal values or two NaNs tie)."""
    strict = a > b if is_max else a < b
    return strict | (torch.isnan(a) & ~torch.isnan(b))


def _channel_ext(x: torch.Tensor, is_max: bool):
    """min/max over channels of x [B,C,H,W] -> (values [B,1,H,W], lowest extremal channel [B,1,H,W])."""
    best = x[:, :1]
    idx = torch.zeros_like(best, dtype=torch.int64)
    for c in range(1, x.shape[1]):
        v = x[:, c:c + 1]
        take = _better(v, best, is_max)
        best = torch.where(take, v, best)
        idx = torch.where(take, torch.full_like(idx, c), idx)
    return best, idx


def _window_ext_values(m: torch.Tensor, patch: int, is_max: bool) -> torch.Tensor:
    """Window min/max of m [B,1,H,W] over patch x patch clipped at the border, NaN-propagating."""
    r = patch // 2
    pad = -math.inf if is_max else math.inf
    mp = F.pad(m, (r, r, r, r), value=pad)
    src = mp if is_max else -mp
    out = F.max_pool2d(torch.nan_to_num(src, nan=0.0, posinf=math.inf, neginf=-math.inf), patch, stride=1)
    if not is_max:
        out = -out
    has_nan = F.max_pool2d(torch.isnan(mp).to(m.dtype), patch, stride=1) > 0
    return torch.where(has_nan, torch.full_like(out, math.nan), out)


def _window_first_ext(m: torch.Tensor, out: torch.Tensor, patch: int, is_max: bool) -> torch.Tensor:
    """Flat index (y*W+x) of the first element (row-major) of each window equal to its extremum."""
    B, _, H, W = m.shape
    r = patch // 2
    pad = -math.inf if is_max else math.inf
    mp = F.pad(m, (r, r, r, r), value=pad)
    sel = torch.full(out.shape, -1, dtype=torch.int64, device=m.device)
    ys = torch.arange(H, device=m.device).view(1, 1, H, 1)
    xs = torch.arange(W, device=m.device).view(1, 1, 1, W)
    nan_out = torch.isnan(out)
    for dy in range(patch):
        for dx in range(patch):
            v = mp[:, :, dy:dy + H, dx:dx + W]
            hit = (v == out) | (torch.isnan(v) & nan_out)
            flat = (ys + dy - r) * W + (xs + dx - r)
            sel = torch.where((sel < 0) & hit, flat.expand_as(sel), sel)
    return sel


class _ChannelWindowExt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, patch, is_max):
        m, cidx = _channel_ext(x, is_max)
        out = _window_ext_values(m, patch, is_max)
        ctx.save_for_backward(x, m, cidx, out)
        ctx.patch, ctx.is_max = patch, is_max
        return out

    @staticmethod
    def backward(ctx, g):
        x, m, cidx, out = ctx.saved_tensors
        B, C, H, W = x.shape
        sel = _window_first_ext(m, out, ctx.patch, ctx.is_max)  # [B,1,H,W] pixel index
        c = torch.gather(cidx.reshape(B, H * W), 1, sel.reshape(B, H * W))
        target = c * (H * W) + sel.reshape(B, H * W)
        gx = torch.zeros(B, C * H * W, dtype=g.dtype, device=g.device)
        gx.scatter_add_(1, target, g.reshape(B, H * W))
        return gx.view(B, C, H, W), None, None


def _check_patch(patch):
    if isinstance(patch, bool) or not isinstance(patch, int):
        raise TypeError(f"patch must be an int, got {type(patch).__name__}")
    if patch <= 0 or patch % 2 == 0:
        raise ValueError(f"patch must be a positive odd integer, got {patch}")


def dark_channel(I: torch.Tensor, patch: int = 15) -> torch.Tensor:
    """min over channels, then over the patch x patch window clipped at the border: [B,1,H,W]."""
    _check_patch(patch)
    out = _ChannelWindowExt.apply(I.to(compute_dtype(I)), patch, False)
    return out.to(I.dtype)


def bright_channel(I: torch.Tensor, patch: int = 15) -> torch.Tensor:
    """max over channels, then over the patch x patch window clipped at the border: [B,1,H,W]."""
    _check_patch(patch)
    out = _ChannelWindowExt.apply(I.to(compute_dtype(I)), patch, True)
    return out.to(I.dtype)


def top_k_count(H: int, W: int, top: float) -> int:
    """k = max(1, floor(top * H * W))."""
    return max(1, int(math.floor(top * H * W)))


def atmospheric_light(I: torch.Tensor, dark: torch.Tensor | None = None, top: float = 0.001,
                      patch: int = 15) -> torch.Tensor:
    """Per-channel mean of I over the k brightest dark-channel pixels: [B,C,1,1] in I's dtype.

    Ranking: a stable descending sort of the dark values (ties keep the lower flat index first),
    NaN ranked as the largest. No gradient.
    """
    with torch.no_grad():
        if dark is None:
            dark = dark_channel(I, patch)
        B, C, H, W = I.shape
        dt = compute_dtype(I)
        k = top_k_count(H, W, top)
        d = dark.to(dt).reshape(B, H * W)
        d = torch.where(torch.isnan(d), torch.full_like(d, math.inf), d)
        # NaN as +inf, then among +inf the NaN ones first: rank key (is_nan, value).
        isn = torch.isnan(dark.to(dt).reshape(B, H * W))
        order = torch.sort(d, dim=1, descending=True, stable=True).indices
        if bool(isn.any()):
            # stable sort by value, then stable by NaN flag: NaNs first, each group in index order
            order = order.gather(1, torch.sort(isn.gather(1, order).to(torch.int8), dim=1, descending=True,
                                               stable=True).indices)
        idx = order[:, :k]
        Ii = I.to(dt).reshape(B, C, H * W)
        sel = torch.gather(Ii, 2, idx.unsqueeze(1).expand(B, C, k))
        return sel.mean(dim=2).reshape(B, C, 1, 1).to(I.dtype)


def _A_param(A, I: torch.Tensor, dt) -> torch.Tensor:
    if isinstance(A, torch.Tensor):
        a = A.to(dt)
        if a.dim() == 0:
            a = a.reshape(1, 1, 1, 1)
        return a
    return torch.tensor(float(A), dtype=dt, device=I.device).reshape(1, 1, 1, 1)


def transmission(I: torch.Tensor, A, omega: float = 0.95, patch: int = 15) -> torch.Tensor:
    """t~ = 1 - omega * dark_channel(I / max(A, A_MIN)): [B,1,H,W] in I's dtype."""
    _check_patch(patch)
    dt = compute_dtype(I)
    a = torch.clamp(_A_param(A, I, dt), min=A_MIN)
    d = _ChannelWindowExt.apply(I.to(dt) / a, patch, False)
    return (1.0 - omega * d).to(I.dtype)


def luma(I: torch.Tensor) -> torch.Tensor:
    """BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B of a 3-channel image (a 1-channel image is its
    own guide; other channel counts use the channel mean): [B,1,H,W]."""
    if I.shape[1] == 3:
        return 0.299 * I[:, 0:1] + 0.587 * I[:, 1:2] + 0.114 * I[:, 2:3]
    return I.mean(dim=1, keepdim=True)


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Border-normalised (2r+1)^2 box mean by cumulative sums (private fallback)."""
    if r == 0:
        return x
    H, W = x.shape[-2:]

    def along(v, dim, n):
        c = torch.cumsum(v, dim=dim)
        c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
        i = torch.arange(n, device=v.device)
        hi = torch.clamp(i + r + 1, max=n)
        lo = torch.clamp(i - r, min=0)
        s = c.index_select(dim, hi) - c.index_select(dim, lo)
        cnt = (hi - lo).to(v.dtype)
        shape = [1] * v.dim()
        shape[dim] = n
        return s / cnt.view(shape)

    return along(along(x, -2, H), -1, W)


def _guided_filter_gray(guide, src, r, eps):
    """He et al.'s gray-guide guided filter with the private box filter (fallback)."""
    mI, mp = _box(guide, r), _box(src, r)
    var = _box(guide * guide, r) - mI * mI
    cov = _box(guide * src, r) - mI * mp
    a = cov / (var + eps)
    b = mp - a * mI
    return _box(a, r) * guide + _box(b, r)


def guided_filter(guide, src, r, eps):
    """The package's guided filter (fastdehaze.reference.filters) when it exists, else the
    private gray-guide fallback above (same formula)."""
    try:
        from . import filters as _f
        return _f.guided_filter(guide, src, r, eps)
    except (ImportError, AttributeError):
        return _guided_filter_gray(guide, src, r, eps)


def dehaze_dcp(I: torch.Tensor, patch: int = 15, omega: float = 0.95, top: float = 0.001, r: int = 60,
               eps: float = 1e-3, t0: float = 0.1, return_all: bool = False):
    """DCP dehazing: J (and, with return_all, the refined t [B,1,H,W] and A [B,C,1,1]).

    dark channel -> A (mean of the top fraction) -> t~ = 1 - omega dark(I/A) -> guided filter
    (luma guide, radius r, eps) -> clamp to [t0, 1] -> J = (I - A) / t + A clamped to [0, 1].
    """
    with torch.no_grad():
        dt = compute_dtype(I)
        x = I.to(dt)
        A = atmospheric_light(x, dark_channel(x, patch), top)
        t_raw = transmission(x, A, omega, patch)
        t = guided_filter(luma(x), t_raw, r, eps)
        t = torch.clamp(t, t0, 1.0)
        J = torch.clamp((x - A) / t + A, 0.0, 1.0)
    if return_all:
        return J.to(I.dtype), t.to(I.dtype), A.to(I.dtype)
    return J.to(I.dtype)
