"""Triton kernels of the box and guided filters (SPEC section 2).

Box filter: separable, two 1-D passes (along W, then along H). Each pass is two kernels over
blocks of lines: ``_prefix_kernel`` writes float64 prefix sums of every line (restarted per
line, chunk by chunk with a carry: O(1) per pixel, rounding-level error) plus prefix counts of
non-finite values, and ``_window_kernel`` turns them into window means (or, for the adjoint,
window sums of value / count). A window holding NaN/inf gives NaN (the reference's rule).

Guided filter: the statistics planes (I, p, I p, I I; 13 for a colour guide) are stacked with
PyTorch products, box-filtered by the kernels above in one call, turned into a, b by
``_gf_coeff_kernel`` (gray formula, or the 3x3 adjugate solve), box-filtered again, and
combined with the guide by ``_gf_out_kernel``.
"""
import torch
import triton
import triton.language as tl

from . import INTERPRET, block_size, image_block, join_f64, split_f64


@triton.jit
def _count(i, L, r):
    lo = tl.maximum(i - r, 0)
    hi = tl.minimum(i + r, L - 1)
    return tl.maximum(hi - lo + 1, 1)


@triton.jit
def _prefix_kernel(x_ptr, S_ptr, N_ptr, nlines, L, Q, PS, QS, ES, r,
                   ADJ: tl.constexpr, LB: tl.constexpr, BLOCK: tl.constexpr):
    l = tl.program_id(0).to(tl.int64) * LB + tl.arange(0, LB)
    lm = l < nlines
    base = (l // Q) * PS + (l % Q) * QS
    carry = tl.zeros([LB], dtype=tl.float64)
    ncarry = tl.zeros([LB], dtype=tl.int32)
    zero = tl.zeros([LB], dtype=tl.float64)
    tl.store(S_ptr + l * (L + 1), zero, mask=lm)
    tl.store(N_ptr + l * (L + 1), ncarry, mask=lm)
    for c0 in range(0, L, BLOCK):
        i = c0 + tl.arange(0, BLOCK).to(tl.int64)
        m = lm[:, None] & (i < L)[None, :]
        v = tl.load(x_ptr + base[:, None] + i[None, :] * ES, mask=m, other=0.0)
        if x_ptr.dtype.element_ty != tl.float64:
            v = v.to(tl.float32)  # half: through float32 (the interpreter converts bf16 wrongly)
        v = v.to(tl.float64)
        bad = (v != v) | (v == float("inf")) | (v == -float("inf"))
        v = tl.where(bad, 0.0, v)
        if ADJ:
            v = v / _count(i, L, r).to(tl.float64)[None, :]
        cs = tl.cumsum(v, axis=1) + carry[:, None]
        nb = tl.cumsum(bad.to(tl.int32), axis=1) + ncarry[:, None]
        off = l[:, None] * (L + 1) + 1 + i[None, :]
        tl.store(S_ptr + off, cs, mask=m)
        tl.store(N_ptr + off, nb, mask=m)
        carry = carry + tl.sum(v, axis=1)
        ncarry = ncarry + tl.sum(bad.to(tl.int32), axis=1)


@triton.jit
def _window_kernel(S_ptr, N_ptr, out_ptr, nlines, L, Q, PS, QS, ES, r,
                   ADJ: tl.constexpr, LB: tl.constexpr, BLOCK: tl.constexpr):
    l = tl.program_id(0).to(tl.int64) * LB + tl.arange(0, LB)
    lm = l < nlines
    base = (l // Q) * PS + (l % Q) * QS
    for c0 in range(0, L, BLOCK):
        i = c0 + tl.arange(0, BLOCK).to(tl.int64)
        m = lm[:, None] & (i < L)[None, :]
        hi = tl.minimum(i + r, L - 1) + 1
        lo = tl.maximum(i - r, 0)
        row = l[:, None] * (L + 1)
        s = tl.load(S_ptr + row + hi[None, :], mask=m, other=0.0) - tl.load(S_ptr + row + lo[None, :], mask=m, other=0.0)
        nb = tl.load(N_ptr + row + hi[None, :], mask=m, other=0) - tl.load(N_ptr + row + lo[None, :], mask=m, other=0)
        if not ADJ:
            s = s / tl.maximum(hi - lo, 1).to(tl.float64)[None, :]
        s = tl.where(nb > 0, float("nan"), s)
        if out_ptr.dtype.element_ty != tl.float64:
            s = s.to(tl.float32)
        tl.store(out_ptr + base[:, None] + i[None, :] * ES, s.to(out_ptr.dtype.element_ty), mask=m)


def _pass(x, out, nlines, L, Q, PS, QS, ES, r, adjoint):
    S = torch.empty((nlines, L + 1), dtype=torch.float64, device=x.device)
    N = torch.empty((nlines, L + 1), dtype=torch.int32, device=x.device)
    if INTERPRET:
        BLOCK = max(16, min(triton.next_power_of_2(L), 512))
        LB = max(1, min(triton.next_power_of_2(nlines), 16384 // BLOCK))
    else:
        # float64 adjoint (a division per value): 4 lines, 8 spilled 8 bytes on sm_90 (test_triton_aot)
        BLOCK, LB = 128, (4 if adjoint and x.dtype == torch.float64 else 8)
    grid = (triton.cdiv(nlines, LB),)
    _prefix_kernel[grid](x, S, N, nlines, L, Q, PS, QS, ES, r, ADJ=adjoint, LB=LB, BLOCK=BLOCK)
    _window_kernel[grid](S, N, out, nlines, L, Q, PS, QS, ES, r, ADJ=adjoint, LB=LB, BLOCK=BLOCK)


def _box(x, r, adjoint):
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out
    B, C, H, W = x.shape
    P = B * C
    tmp = torch.empty((P, H, W), dtype=torch.float64, device=x.device)
    _pass(x, tmp, P * H, W, H, H * W, W, 1, r, adjoint)    # along W: line = (plane, row)
    _pass(tmp, out, P * W, H, W, H * W, 1, W, r, adjoint)  # along H: line = (plane, column)
    return out


def box_filter(x, r):
    """Border-normalised (2r+1)^2 box mean of x [B,C,H,W], x's dtype."""
    return _box(x, r, False)


def box_filter_backward(grad, r):
    """Adjoint of box_filter: the box sum of grad / count."""
    return _box(grad, r, True)


@triton.jit
def _gf_coeff_kernel(m_ptr, ab_ptr, HW, nblk, eps_hi, eps_lo, K: tl.constexpr, KA: tl.constexpr,
                     COLOR: tl.constexpr, BLOCK: tl.constexpr):
    # means [P, K, HW] -> a (1 or 3 planes), b: [P, KA, HW]; same operation order as the reference
    pl, blk, i = image_block(nblk, BLOCK)
    msk = i < HW
    eps = join_f64(eps_hi, eps_lo, tl.zeros([BLOCK], dtype=ab_ptr.dtype.element_ty))  # exact in float64
    base = m_ptr + pl * K * HW + i
    out = ab_ptr + pl * KA * HW + i
    if COLOR:
        i0 = tl.load(base, mask=msk, other=0.0)
        i1 = tl.load(base + HW, mask=msk, other=0.0)
        i2 = tl.load(base + 2 * HW, mask=msk, other=0.0)
        s00 = tl.load(base + 3 * HW, mask=msk, other=1.0) - i0 * i0 + eps
        s01 = tl.load(base + 4 * HW, mask=msk, other=0.0) - i0 * i1
        s02 = tl.load(base + 5 * HW, mask=msk, other=0.0) - i0 * i2
        s11 = tl.load(base + 6 * HW, mask=msk, other=1.0) - i1 * i1 + eps
        s12 = tl.load(base + 7 * HW, mask=msk, other=0.0) - i1 * i2
        s22 = tl.load(base + 8 * HW, mask=msk, other=1.0) - i2 * i2 + eps
        mp = tl.load(base + 9 * HW, mask=msk, other=0.0)
        c0 = tl.load(base + 10 * HW, mask=msk, other=0.0) - i0 * mp
        c1 = tl.load(base + 11 * HW, mask=msk, other=0.0) - i1 * mp
        c2 = tl.load(base + 12 * HW, mask=msk, other=0.0) - i2 * mp
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
        tl.store(out, a0, mask=msk)
        tl.store(out + HW, a1, mask=msk)
        tl.store(out + 2 * HW, a2, mask=msk)
        tl.store(out + 3 * HW, mp - a0 * i0 - a1 * i1 - a2 * i2, mask=msk)
    else:
        mI = tl.load(base, mask=msk, other=0.0)
        mp = tl.load(base + HW, mask=msk, other=0.0)
        mIp = tl.load(base + 2 * HW, mask=msk, other=0.0)
        mII = tl.load(base + 3 * HW, mask=msk, other=1.0)
        a = (mIp - mI * mp) / (mII - mI * mI + eps)
        tl.store(out, a, mask=msk)
        tl.store(out + HW, mp - a * mI, mask=msk)


@triton.jit
def _gf_out_kernel(I_ptr, mab_ptr, q_ptr, C, HW, nblk, G: tl.constexpr, KA: tl.constexpr, BLOCK: tl.constexpr):
    # q = sum_g mean_a_g I_g + mean_b, for plane pl = b * C + c
    pl, blk, i = image_block(nblk, BLOCK)
    b = pl // C
    msk = i < HW
    m = mab_ptr + pl * KA * HW + i
    q = tl.load(m + (KA - 1) * HW, mask=msk, other=0.0)
    for g in tl.static_range(G):
        Iv = tl.load(I_ptr + (b * G + g) * HW + i, mask=msk, other=0.0)
        if I_ptr.dtype.element_ty != tl.float64:
            Iv = Iv.to(tl.float32)  # half: through float32 (the interpreter converts bf16 wrongly)
        Iv = Iv.to(q.dtype)
        q += tl.load(m + g * HW, mask=msk, other=0.0) * Iv
    if q_ptr.dtype.element_ty != tl.float64:
        q = q.to(tl.float32)
    tl.store(q_ptr + pl * HW + i, q.to(q_ptr.dtype.element_ty), mask=msk)


def guided_filter(I, p, r, eps):
    """Guided filter q of p [B,C,H,W] by I [B,1|3,H,W] (same dtype), p's dtype: statistics planes
    (PyTorch products), Triton box filter of all of them at once, Triton coefficient kernel,
    Triton box filter of a and b, Triton output kernel."""
    cdt = torch.float64 if p.dtype == torch.float64 else torch.float32
    q = torch.empty_like(p, memory_format=torch.contiguous_format)
    if p.numel() == 0:
        return q
    B, C, H, W = p.shape
    G = I.shape[1]
    HW = H * W
    Ic, pc = I.to(cdt).contiguous(), p.to(cdt).contiguous()
    Ie = Ic[:, None].expand(B, C, G, H, W)
    pe = pc[:, :, None]
    if G == 1:
        stats = torch.cat([Ie, pe, Ie * pe, Ie * Ie], 2)  # [B, C, 4, H, W]
    else:
        prods = [Ie[:, :, i:i + 1] * Ie[:, :, j:j + 1] for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))]
        stats = torch.cat([Ie] + prods + [pe, Ie * pe], 2)  # [B, C, 13, H, W]
    K = stats.shape[2]
    KA = 2 if G == 1 else 4
    means = box_filter(stats.reshape(B * C * K, 1, H, W), r)
    ab = torch.empty((B * C * KA, 1, H, W), dtype=cdt, device=p.device)
    # planes x pixel blocks on axis 0 (axis 1 stops at 65535). The colour solve holds ~30 values per
    # pixel: 256-pixel blocks (2 per thread) keep float64 within the registers (1024 spilled on sm_90).
    BLOCK = block_size(HW, gpu_block=256 if G == 3 else 1024)
    nblk = triton.cdiv(HW, BLOCK)
    _gf_coeff_kernel[(nblk * B * C,)](means, ab, HW, nblk, *split_f64(eps), K=K, KA=KA, COLOR=G == 3, BLOCK=BLOCK)
    mab = box_filter(ab, r)
    BLOCK = block_size(HW)
    nblk = triton.cdiv(HW, BLOCK)
    _gf_out_kernel[(nblk * B * C,)](I.contiguous(), mab, q, C, HW, nblk, G=G, KA=KA, BLOCK=BLOCK)
    return q
