"""Triton kernels of the atmospheric scattering model ops (SPEC section 1).

Grid = (pixel blocks, B); each program loops over the channels so that a broadcast t is read
once per pixel. Parameters A/t0 arrive as [B, C] tensors of the compute dtype, which is also
the dtype the kernels compute in (float32 for half inputs, float64 for float64).
"""
import torch
import triton
import triton.language as tl

from . import block_size


@triton.jit
def _recover_kernel(I_ptr, t_ptr, A_ptr, t0_ptr, J_ptr, C, HW, lo, hi,
                    T_PER_CHANNEL: tl.constexpr, CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = p < HW
    tv = tl.load(t_ptr + b * HW + p, mask=m, other=1.0).to(cdt)
    for c in range(C):
        if T_PER_CHANNEL:
            tv = tl.load(t_ptr + (b * C + c) * HW + p, mask=m, other=1.0).to(cdt)
        t0 = tl.load(t0_ptr + b * C + c)
        A = tl.load(A_ptr + b * C + c)
        tc = tl.where(tv < t0, t0, tv)  # NaN stays NaN, as torch.clamp(t, min=t0)
        off = (b * C + c) * HW + p
        Iv = tl.load(I_ptr + off, mask=m, other=0.0).to(cdt)
        J = (Iv - A) / tc + A
        if CLAMP:
            J = tl.where(J < lo, lo, tl.where(J > hi, hi, J))
        tl.store(J_ptr + off, J.to(J_ptr.dtype.element_ty), mask=m)


@triton.jit
def _recover_backward_kernel(g_ptr, I_ptr, t_ptr, A_ptr, t0_ptr, gI_ptr, gt_ptr, gA_ptr, C, HW, lo, hi,
                             T_PER_CHANNEL: tl.constexpr, CLAMP: tl.constexpr, NEEDS_I: tl.constexpr,
                             NEEDS_T: tl.constexpr, NEEDS_A: tl.constexpr, BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = p < HW
    acc_t = tl.zeros([BLOCK], dtype=cdt)
    tv = tl.load(t_ptr + b * HW + p, mask=m, other=1.0).to(cdt)
    for c in range(C):
        if T_PER_CHANNEL:
            tv = tl.load(t_ptr + (b * C + c) * HW + p, mask=m, other=1.0).to(cdt)
        t0 = tl.load(t0_ptr + b * C + c)
        A = tl.load(A_ptr + b * C + c)
        tc = tl.where(tv < t0, t0, tv)
        inv = 1.0 / tc
        off = (b * C + c) * HW + p
        Iv = tl.load(I_ptr + off, mask=m, other=0.0).to(cdt)
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(cdt)
        if CLAMP:
            J = (Iv - A) * inv + A
            g = tl.where((J >= lo) & (J <= hi), g, 0.0)
        if NEEDS_I:
            tl.store(gI_ptr + off, (g * inv).to(gI_ptr.dtype.element_ty), mask=m)
        dt = tl.where(tv >= t0, -g * (Iv - A) * inv * inv, 0.0)
        if T_PER_CHANNEL:
            if NEEDS_T:
                tl.store(gt_ptr + off, dt.to(gt_ptr.dtype.element_ty), mask=m)
        else:
            acc_t += dt
        if NEEDS_A:
            sA = tl.sum(tl.where(m, g * (1.0 - inv), 0.0), axis=0)
            tl.atomic_add(gA_ptr + b * C + c, sA)
    if NEEDS_T and not T_PER_CHANNEL:
        tl.store(gt_ptr + b * HW + p, acc_t.to(gt_ptr.dtype.element_ty), mask=m)


def recover(I, t, A, t0, lo, hi, clamp):
    """J [B,C,H,W] = (I - A) / max(t, t0) + A, optionally clamped to [lo, hi]."""
    I, t = I.contiguous(), t.contiguous()
    J = torch.empty_like(I, memory_format=torch.contiguous_format)
    B, C, H, W = I.shape
    HW = H * W
    if J.numel() == 0:
        return J
    BLOCK = block_size(HW)
    _recover_kernel[(triton.cdiv(HW, BLOCK), B)](I, t, A.contiguous(), t0.contiguous(), J, C, HW, lo, hi,
                                                 T_PER_CHANNEL=t.shape[1] != 1, CLAMP=clamp, BLOCK=BLOCK)
    return J


def recover_backward(grad, I, t, A, t0, lo, hi, clamp, needs_I, needs_t, needs_A):
    I, t, grad = I.contiguous(), t.contiguous(), grad.contiguous()
    B, C, H, W = I.shape
    HW = H * W
    gI = torch.empty_like(I, memory_format=torch.contiguous_format) if needs_I else I.new_empty(0)
    gt = torch.empty_like(t, memory_format=torch.contiguous_format) if needs_t else t.new_empty(0)
    gA = torch.zeros((B, C), dtype=A.dtype, device=A.device) if needs_A else A.new_empty(0)
    if I.numel() == 0 or not (needs_I or needs_t or needs_A):
        return gI, gt, gA
    BLOCK = block_size(HW)
    _recover_backward_kernel[(triton.cdiv(HW, BLOCK), B)](
        grad, I, t, A.contiguous(), t0.contiguous(), gI if needs_I else I, gt if needs_t else t, gA if needs_A else A,
        C, HW, lo, hi, T_PER_CHANNEL=t.shape[1] != 1, CLAMP=clamp, NEEDS_I=needs_I, NEEDS_T=needs_t,
        NEEDS_A=needs_A, BLOCK=BLOCK)
    return gI, gt, gA
