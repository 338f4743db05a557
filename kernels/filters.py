"""Triton kernels of the box and guided filters (SPEC section 2).

Box filter: separable, two 1-D passes (along W, then along H). Each pass is two kernels over
blocks of lines: ``_prefix_kernel`` writes float64 prefix sums of every line (restarted per
line, chunk by chunk with a carry: O(1) per pixel, rounding-level error) plus prefix counts of
non-finite values, and ``_window_kernel`` turns them into window means (or, for the adjoint,
window sums of value / count). A window holding NaN/inf gives NaN (the reference's rule).

Guided filter: the box filter above on the stacked statistics (I, p, I p, I I, ...), the
coefficients and the output computed with PyTorch element-wise ops (the formulas of
``fastdehaze.reference.filters``): only the box filters are Triton kernels.
"""
import torch
import triton
import triton.language as tl

from . import INTERPRET


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
        BLOCK, LB = 128, 8
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


def guided_filter(I, p, r, eps):
    """Guided filter q of p [B,C,H,W] by I [B,1|3,H,W] (same dtype), p's dtype."""
    from ..reference import filters as ref  # the formulas; the box filters are the kernels above
    cdt = torch.float64 if p.dtype == torch.float64 else torch.float32
    if p.numel() == 0:
        return torch.empty_like(p, memory_format=torch.contiguous_format)
    Ic, pc = I.to(cdt).contiguous(), p.to(cdt).contiguous()
    ma, mb = ref.guided_coefficients(Ic, pc, r, eps, box=lambda x, rr: box_filter(x, rr))
    return ref.combine(Ic, ma, mb).to(p.dtype).contiguous()
