"""Triton kernels of the depth-difference ops (DCMPNet difference perception, SPEC section 5).

Softmax statistics: ``_lse_partial_kernel`` (grid = B x chunks, folded into axis 0 like every
grid here) keeps, per lane, an online pair
(running max m, sum s of exp(x - m)) over the chunk's tiles, one exp per value
(exp(-|x - m|) serves both the rescale and the new term), then reduces its lanes to one pair
per chunk; the chunks' pairs are merged per image on the host side of the launch (a few
[B, chunks] tensor ops, the second level) into lse. Per-pixel kernels: grid = pixel blocks x B,
each program loops over the channels; their reductions write one partial per program, summed
by torch. Compute dtype: float32 for half inputs, float64 for float64 (the dtype of the
``lse`` tensor). Scalars arrive as kernel arguments and are turned into the compute dtype in the
kernel (``eps`` as a float32 pair hi + lo, so that float64 keeps its full precision: Triton passes
Python floats as float32).
"""
import torch
import triton
import triton.language as tl

from . import INTERPRET, block_size, image_block, split_f64


@triton.jit
def _lse_partial_kernel(a_ptr, c_ptr, pm_ptr, ps_ptr, N, CHUNK, nchunk, TWO: tl.constexpr, BLOCK: tl.constexpr):
    cdt = pm_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # B x chunks on axis 0 (axis 1 stops at 65535)
    b = pid // nchunk
    k = pid % nchunk
    start = k * CHUNK
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), cdt)
    s = tl.zeros([BLOCK], dtype=cdt)
    nans = tl.zeros([BLOCK], dtype=tl.int32)
    for it in range(0, CHUNK, BLOCK):
        i = start + it + lanes
        msk = (i < N) & (it + lanes < CHUNK)
        x = tl.load(a_ptr + b * N + i, mask=msk, other=float("-inf")).to(cdt)
        if TWO:
            x = x - tl.load(c_ptr + b * N + i, mask=msk, other=0.0).to(cdt)
        isnan = x != x
        nans += isnan.to(tl.int32)
        x = tl.where(isnan, float("-inf"), x)
        big = x > m
        m_inf = m == float("-inf")
        # exp(-|x - m|): the rescale factor when x is the new max, else the new term; no value yet
        # (m = -inf) or x = -inf give 0 (and never form -inf - -inf).
        d = tl.exp(-tl.abs(tl.where(m_inf, float("inf"), x - tl.where(m_inf, 0.0, m))))
        d = tl.where(x == float("-inf"), 0.0, d)
        s = tl.where(big, s * d + 1.0, s + d)
        m = tl.where(big, x, m)
    M = tl.max(m, axis=0)
    M_safe = tl.where(M == float("-inf"), 0.0, M)
    S = tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - M_safe)), axis=0)
    S = tl.where(tl.sum(nans, axis=0) > 0, float("nan"), S)
    tl.store(pm_ptr + b * nchunk + k, M)
    tl.store(ps_ptr + b * nchunk + k, S)


@triton.jit
def _softmax_sum(a_ptr, c_ptr, b, C, HW, p, msk, L, TWO: tl.constexpr, BLOCK: tl.constexpr):
    S = tl.zeros([BLOCK], dtype=L.dtype)
    for ch in range(C):
        off = (b * C + ch) * HW + p
        x = tl.load(a_ptr + off, mask=msk, other=0.0).to(L.dtype)
        if TWO:
            x = x - tl.load(c_ptr + off, mask=msk, other=0.0).to(L.dtype)
        S += tl.exp(x - L)
    return S


@triton.jit
def _dpw_kernel(d_ptr, lse_ptr, W_ptr, C, HW, nblk, eps_hi, eps_lo, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    msk = p < HW
    L = tl.load(lse_ptr + b)
    zero = tl.zeros([BLOCK], dtype=L.dtype)
    if NORMALIZE:
        scale = zero + HW
        ceps = zero
    else:
        scale = zero + 1.0
        ceps = (zero + eps_hi + eps_lo) * C
    S = _softmax_sum(d_ptr, d_ptr, b, C, HW, p, msk, L, False, BLOCK)
    tl.store(W_ptr + b * HW + p, (scale * S + ceps).to(W_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _dpw_dot_kernel(g_ptr, d_ptr, lse_ptr, part_ptr, C, HW, nblk, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    msk = p < HW
    L = tl.load(lse_ptr + b)
    if NORMALIZE:
        scale = tl.zeros([BLOCK], dtype=L.dtype) + HW
    else:
        scale = tl.zeros([BLOCK], dtype=L.dtype) + 1.0
    S = _softmax_sum(d_ptr, d_ptr, b, C, HW, p, msk, L, False, BLOCK)
    g = tl.load(g_ptr + b * HW + p, mask=msk, other=0.0).to(L.dtype)
    tl.store(part_ptr + b * nblk + blk, tl.sum(tl.where(msk, scale * g * S, 0.0), axis=0))


@triton.jit
def _dpw_grad_kernel(g_ptr, d_ptr, lse_ptr, dot_ptr, gd_ptr, C, HW, nblk, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    msk = p < HW
    L = tl.load(lse_ptr + b)
    if NORMALIZE:
        scale = tl.zeros([BLOCK], dtype=L.dtype) + HW
    else:
        scale = tl.zeros([BLOCK], dtype=L.dtype) + 1.0
    coef = scale * tl.load(g_ptr + b * HW + p, mask=msk, other=0.0).to(L.dtype) - tl.load(dot_ptr + b)
    for ch in range(C):
        off = (b * C + ch) * HW + p
        x = tl.load(d_ptr + off, mask=msk, other=0.0).to(L.dtype)
        tl.store(gd_ptr + off, (tl.exp(x - L) * coef).to(gd_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _ddl_partial_kernel(h_ptr, c_ptr, dp_ptr, dt_ptr, lse_ptr, part_ptr, C, HW, nblk, eps_hi, eps_lo,
                        BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    msk = p < HW
    L = tl.load(lse_ptr + b)
    ceps = (tl.zeros([BLOCK], dtype=L.dtype) + eps_hi + eps_lo) * C
    S = _softmax_sum(h_ptr, c_ptr, b, C, HW, p, msk, L, True, BLOCK)
    W = S + ceps
    e = tl.load(dp_ptr + b * HW + p, mask=msk, other=0.0).to(L.dtype) - \
        tl.load(dt_ptr + b * HW + p, mask=msk, other=0.0).to(L.dtype)
    ae = tl.abs(e)
    v1 = tl.where(msk, tl.abs(W * e), 0.0)
    v2 = tl.where(msk, ae, 0.0)
    v3 = tl.where(msk & (W * e != 0.0), S * ae, 0.0)  # S * dL/dW (up to g/N)
    q = part_ptr + (b * nblk + blk) * 3
    tl.store(q, tl.sum(v1, axis=0))
    tl.store(q + 1, tl.sum(v2, axis=0))
    tl.store(q + 2, tl.sum(v3, axis=0))


@triton.jit
def _sgn(x):
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, tl.where(x != x, x, 0.0)))


@triton.jit
def _ddl_backward_kernel(g_ptr, h_ptr, c_ptr, dp_ptr, dt_ptr, st_ptr, gh_ptr, gc_ptr, gp_ptr, gt_ptr, C, HW, nblk, N,
                         eps_hi, eps_lo, NEEDS_H: tl.constexpr, NEEDS_C: tl.constexpr, NEEDS_P: tl.constexpr, NEEDS_T: tl.constexpr,
                         BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    msk = p < HW
    L = tl.load(st_ptr + b * 2)
    g = tl.load(g_ptr)
    gdot = g * tl.load(st_ptr + b * 2 + 1)
    zero = tl.zeros([BLOCK], dtype=L.dtype)
    inv = g / (zero + N)
    ceps = (zero + eps_hi + eps_lo) * C
    S = _softmax_sum(h_ptr, c_ptr, b, C, HW, p, msk, L, True, BLOCK)
    W = S + ceps
    e = tl.load(dp_ptr + b * HW + p, mask=msk, other=0.0).to(L.dtype) - \
        tl.load(dt_ptr + b * HW + p, mask=msk, other=0.0).to(L.dtype)
    gD = inv * (_sgn(W * e) * W + _sgn(e))
    if NEEDS_P:
        tl.store(gp_ptr + b * HW + p, gD.to(gp_ptr.dtype.element_ty), mask=msk)
    if NEEDS_T:
        tl.store(gt_ptr + b * HW + p, (-gD).to(gt_ptr.dtype.element_ty), mask=msk)
    if NEEDS_H or NEEDS_C:
        coef = inv * tl.where(W * e != 0.0, tl.abs(e), 0.0) - gdot
        for ch in range(C):
            off = (b * C + ch) * HW + p
            x = tl.load(h_ptr + off, mask=msk, other=0.0).to(L.dtype) - \
                tl.load(c_ptr + off, mask=msk, other=0.0).to(L.dtype)
            v = tl.exp(x - L) * coef
            if NEEDS_H:
                tl.store(gh_ptr + off, v.to(gh_ptr.dtype.element_ty), mask=msk)
            if NEEDS_C:
                tl.store(gc_ptr + off, (-v).to(gc_ptr.dtype.element_ty), mask=msk)


# ---- launchers -------------------------------------------------------------------------------

def _cdt(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_split = split_f64  # eps as a float32 pair (hi, lo) with hi + lo == eps to float64 precision


def _lse(a, c, B, N, cdt):
    """lse [B] of the N values per image of a - c (c None: of a)."""
    BLOCK = block_size(N, gpu_block=1024)
    CHUNK = BLOCK * (triton.cdiv(max(N, 1), BLOCK) if INTERPRET else 8)
    nchunk = max(1, triton.cdiv(N, CHUNK))
    pm = torch.empty((B, nchunk), dtype=cdt, device=a.device)
    ps = torch.empty((B, nchunk), dtype=cdt, device=a.device)
    _lse_partial_kernel[(nchunk * B,)](a, a if c is None else c, pm, ps, N, CHUNK, nchunk, TWO=c is not None,
                                     BLOCK=BLOCK)
    # Second level: merge the chunks' (max, sum) pairs; NaN anywhere or a non-finite max -> NaN.
    M = pm.amax(dim=1)
    S = torch.where(pm == float("-inf"), torch.zeros_like(ps), ps * torch.exp(pm - M[:, None])).sum(dim=1)
    bad = torch.isnan(ps).any(dim=1) | ~torch.isfinite(M)
    return torch.where(bad, torch.full_like(M, float("nan")), M + torch.log(S))


def difference_perception_weight(diff, eps, normalize):
    d = diff.contiguous()
    B, C, H, Wd = d.shape
    HW = H * Wd
    cdt = _cdt(d)
    W = torch.empty((B, 1, H, Wd), dtype=d.dtype, device=d.device)
    if B == 0:
        return W, torch.empty((0,), dtype=cdt, device=d.device)
    lse = _lse(d, None, B, C * HW, cdt)
    if HW == 0:
        return W, lse
    BLOCK = block_size(HW)
    nblk = triton.cdiv(HW, BLOCK)
    _dpw_kernel[(nblk * B,)](d, lse, W, C, HW, nblk, *_split(eps), NORMALIZE=bool(normalize), BLOCK=BLOCK)
    return W, lse


def difference_perception_weight_backward(grad, diff, lse, normalize):
    d = diff.contiguous()
    B, C, H, Wd = d.shape
    HW = H * Wd
    gd = torch.empty_like(d, memory_format=torch.contiguous_format)
    if gd.numel() == 0:
        return gd
    g = grad.to(d.dtype).contiguous()
    cdt = _cdt(d)
    BLOCK = block_size(HW)
    nblk = triton.cdiv(HW, BLOCK)
    part = torch.empty((B, nblk), dtype=cdt, device=d.device)
    lse = lse.contiguous()
    _dpw_dot_kernel[(nblk * B,)](g, d, lse, part, C, HW, nblk, NORMALIZE=bool(normalize), BLOCK=BLOCK)
    dot = part.sum(dim=1)
    _dpw_grad_kernel[(nblk * B,)](g, d, lse, dot, gd, C, HW, nblk, NORMALIZE=bool(normalize), BLOCK=BLOCK)
    return gd


def depth_difference_loss(dehazed, clear, depth_pred, depth_target, eps):
    h, c, dp, dt = (t.contiguous() for t in (dehazed, clear, depth_pred, depth_target))
    B, C, H, Wd = h.shape
    HW = H * Wd
    cdt = _cdt(h)
    N = B * HW
    if N == 0:
        return (torch.full((), float("nan"), dtype=cdt, device=h.device),
                torch.zeros((B, 2), dtype=cdt, device=h.device))
    lse = _lse(h, c, B, C * HW, cdt)
    BLOCK = block_size(HW)
    nblk = triton.cdiv(HW, BLOCK)
    part = torch.empty((B, nblk, 3), dtype=cdt, device=h.device)
    _ddl_partial_kernel[(nblk * B,)](h, c, dp, dt, lse, part, C, HW, nblk, *_split(eps), BLOCK=BLOCK)
    loss = (part[..., 0].sum() + part[..., 1].sum()) / N
    stats = torch.stack([lse, part[..., 2].sum(dim=1) / N], dim=1)
    return loss, stats


def depth_difference_loss_backward(grad, dehazed, clear, depth_pred, depth_target, stats, eps, needs_dehazed,
                                   needs_clear, needs_pred, needs_target):
    h, c, dp, dt = (t.contiguous() for t in (dehazed, clear, depth_pred, depth_target))
    B, C, H, Wd = h.shape
    HW = H * Wd
    N = B * HW

    def mk(need, like):
        return torch.empty_like(like, memory_format=torch.contiguous_format) if need else like.new_empty(0)

    gh, gc, gp, gt = mk(needs_dehazed, h), mk(needs_clear, c), mk(needs_pred, dp), mk(needs_target, dt)
    if N == 0 or not (needs_dehazed or needs_clear or needs_pred or needs_target):
        return gh, gc, gp, gt
    cdt = _cdt(h)
    g = grad.to(cdt).reshape(1).contiguous()
    BLOCK = block_size(HW)
    nblk = triton.cdiv(HW, BLOCK)
    _ddl_backward_kernel[(nblk * B,)](
        g, h, c, dp, dt, stats.contiguous(), gh if needs_dehazed else h, gc if needs_clear else c,
        gp if needs_pred else dp, gt if needs_target else dt, C, HW, nblk, N, *_split(eps), NEEDS_H=needs_dehazed, NEEDS_C=needs_clear,
        NEEDS_P=needs_pred, NEEDS_T=needs_target, BLOCK=BLOCK)
    return gh, gc, gp, gt
