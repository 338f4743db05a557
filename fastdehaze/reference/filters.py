"""Reference box filter and guided filter (SPEC section 2): the definitions every backend is
tested against in float64.

Box filter: the mean over the (2r+1) x (2r+1) window centred on each pixel, clipped at the
image border and normalised by the number of pixels inside the clipped window. The clipped
window is a rectangle, so the 2-D mean is the 1-D mean along W followed by the 1-D mean along
H, each with its own count. Each 1-D mean is a difference of float64 prefix sums (one prefix
sum per row/column, never one integral image over the whole image in float32), so the error
stays at rounding level on multi-megapixel images.

Non-finite values (our choice, documented): a NaN or +-inf anywhere in the window makes that
output NaN; outputs whose window holds only finite values are unaffected (a plain prefix-sum
difference would spread a NaN to every later pixel of the row).

Guided filter: He, Sun, Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013 (Alg. 1), and
the fast guided filter of He & Sun, arXiv:1505.00996 (2015) for ``subsample > 1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _box_1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Clipped-window mean of float64 ``x`` along ``dim`` (finite values only)."""
    n = x.shape[dim]
    S = torch.cumsum(x, dim)
    S = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), S], dim)  # S[i] = sum of x[:i]
    idx = torch.arange(n, device=x.device)
    hi = torch.clamp(idx + r, max=n - 1) + 1
    lo = torch.clamp(idx - r, min=0)
    cnt = (hi - lo).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = n
    return (S.index_select(dim, hi) - S.index_select(dim, lo)) / cnt.reshape(shape)


def box_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Border-normalised box mean of ``x`` [B,C,H,W] over (2r+1)^2 windows (see module doc).

    Accumulates in float64 for every input dtype; returns ``x``'s dtype. ``r = 0`` returns x itself.
    """
    if r == 0:
        return x
    if x.numel() == 0:
        return x.new_empty(x.shape)
    xd = x.to(torch.float64)
    fin = torch.isfinite(xd)
    y = _box_1d(_box_1d(torch.where(fin, xd, torch.zeros_like(xd)), r, 3), r, 2)
    bad = _box_1d(_box_1d((~fin).to(torch.float64), r, 3), r, 2)  # > 0 where the window holds a non-finite
    y = torch.where(bad > 0, torch.full_like(y, float("nan")), y)
    return y.to(x.dtype)


def _solve3(s00, s01, s02, s11, s12, s22, c0, c1, c2):
    """Solve the symmetric 3x3 system [[s00,s01,s02],[s01,s11,s12],[s02,s12,s22]] a = c by the
    adjugate (Cramer's rule), element-wise over tensors."""
    m00 = s11 * s22 - s12 * s12
    m01 = s02 * s12 - s01 * s22
    m02 = s01 * s12 - s02 * s11
    m11 = s00 * s22 - s02 * s02
    m12 = s01 * s02 - s00 * s12
    m22 = s00 * s11 - s01 * s01
    inv_det = 1.0 / (s00 * m00 + s01 * m01 + s02 * m02)
    a0 = (m00 * c0 + m01 * c1 + m02 * c2) * inv_det
    a1 = (m01 * c0 + m11 * c1 + m12 * c2) * inv_det
    a2 = (m02 * c0 + m12 * c1 + m22 * c2) * inv_det
    return a0, a1, a2


def guided_coefficients(I: torch.Tensor, p: torch.Tensor, r: int, eps: float, box=box_filter):
    """The box-filtered linear coefficients (mean_a [B,G*C,H,W] ordered g-major per src channel
    c as index c*G + g, mean_b [B,C,H,W]) of the guided filter, in I's dtype (the compute dtype).
    ``box`` is the box filter used (the reference one here; the fused backends pass theirs)."""
    G, C = I.shape[1], p.shape[1]
    mI = box(I, r)
    mp = box(p, r)
    if G == 1:
        var = box(I * I, r) - mI * mI
        cov = box(I * p, r) - mI * mp
        a = cov / (var + eps)
        b = mp - a * mI
        return box(a, r), box(b, r)
    # colour guide: Sigma + eps U, per pixel
    prods = [I[:, i:i + 1] * I[:, j:j + 1] for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))]
    mII = box(torch.cat(prods, 1), r)
    s = [mII[:, k:k + 1] - mI[:, i:i + 1] * mI[:, j:j + 1]
         for k, (i, j) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))]
    s[0] = s[0] + eps
    s[3] = s[3] + eps
    s[5] = s[5] + eps
    mIp = box(torch.cat([I[:, g:g + 1] * p for g in range(3)], 1), r)  # [B, 3C]: g-major blocks of C
    a_list, b_list = [], []
    for c in range(C):
        cov = [mIp[:, g * C + c:g * C + c + 1] - mI[:, g:g + 1] * mp[:, c:c + 1] for g in range(3)]
        a0, a1, a2 = _solve3(*s, *cov)
        a_list += [a0, a1, a2]
        b_list.append(mp[:, c:c + 1] - a0 * mI[:, 0:1] - a1 * mI[:, 1:2] - a2 * mI[:, 2:3])
    return box(torch.cat(a_list, 1), r), box(torch.cat(b_list, 1), r)


def combine(I: torch.Tensor, mean_a: torch.Tensor, mean_b: torch.Tensor) -> torch.Tensor:
    """q_c = sum_g mean_a[c*G+g] I_g + mean_b_c."""
    G, C = I.shape[1], mean_b.shape[1]
    if G == 1:
        return mean_a * I + mean_b
    a = mean_a.reshape(mean_a.shape[0], C, G, *mean_a.shape[2:])
    return (a * I.unsqueeze(1)).sum(2) + mean_b


def subsample_radius(r: int, s: int) -> int:
    """Radius used at 1/s resolution by the fast guided filter: max(1, round(r / s)) (0 for r = 0)."""
    return 0 if r == 0 else max(1, int(round(r / s)))


def guided_filter(guide: torch.Tensor, src: torch.Tensor, r: int = 60, eps: float = 1e-3, subsample: int = 1,
                  box=box_filter) -> torch.Tensor:
    """Guided filter q of ``src`` [B,C,H,W] guided by ``guide`` [B,1|3,H,W] (He et al. 2010/2013).

    Gray guide: a = cov(I,p)/(var(I)+eps), b = mean(p) - a mean(I), q = mean(a) I + mean(b),
    every mean by ``box_filter(., r)``, each src channel filtered independently. Colour guide:
    a = (Sigma + eps U)^-1 cov(I, p) per pixel (3x3 system solved by the adjugate),
    b = mean(p) - a . mean(I), q = mean(a) . I + mean(b).

    ``subsample = s > 1`` (fast guided filter, He & Sun 2015): I and p are subsampled by taking
    every s-th pixel (``x[..., ::s, ::s]``, i.e. nearest, size ceil(H/s) x ceil(W/s), as He's
    ``imresize(., 1/s, 'nearest')``), mean_a and mean_b are computed there with radius
    ``subsample_radius(r, s)``, upsampled to H x W by ``F.interpolate(mode="bilinear",
    align_corners=False)`` and combined with the full-resolution guide.

    The guide is cast to src's dtype; computed in float32 for half inputs (float64 for float64)
    and returned in src's dtype.
    """
    dt = compute_dtype(src)
    I = guide.to(src.dtype).to(dt)  # the guide takes src's dtype first (as the fused kernels read it)
    p = src.to(dt)
    if subsample == 1:
        ma, mb = guided_coefficients(I, p, r, eps, box)
    else:
        H, W = I.shape[2:]
        ma, mb = guided_coefficients(I[..., ::subsample, ::subsample], p[..., ::subsample, ::subsample],
                                     subsample_radius(r, subsample), eps, box)
        if I.shape[0] == 0:
            ma = ma.new_empty(ma.shape[:2] + (H, W))
            mb = mb.new_empty(mb.shape[:2] + (H, W))
        else:
            ma = F.interpolate(ma, size=(H, W), mode="bilinear", align_corners=False)
            mb = F.interpolate(mb, size=(H, W), mode="bilinear", align_corners=False)
    return combine(I, ma, mb).to(src.dtype)
