"""Triton kernels of the atmospheric scattering model ops (SPEC section 1).

Grid = B x pixel blocks, folded into axis 0 (``kernels.image_block``); each program loops over
the channels so that a broadcast t is read once per pixel. Gradients of the [B, C] parameters
(A, beta, b) are written as one partial sum per program and summed by torch: no float atomics,
the same bits on every run (deterministic). Parameters A/t0 arrive as [B, C] tensors of the compute dtype, which is also
the dtype the kernels compute in (float32 for half inputs, float64 for float64).
"""
import torch
import triton
import triton.language as tl

from . import block_size, image_block, join_f64, split_f64


@triton.jit
def _recover_kernel(I_ptr, t_ptr, A_ptr, t0_ptr, J_ptr, C, HW, nblk, lo_hi, lo_lo, hi_hi, hi_lo,
                    T_PER_CHANNEL: tl.constexpr, CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    lo = join_f64(lo_hi, lo_lo, tl.zeros([BLOCK], dtype=cdt))
    hi = join_f64(hi_hi, hi_lo, tl.zeros([BLOCK], dtype=cdt))
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
def _recover_backward_kernel(g_ptr, I_ptr, t_ptr, A_ptr, t0_ptr, gI_ptr, gt_ptr, gA_ptr, C, HW, nblk, lo_hi, lo_lo, hi_hi, hi_lo,
                             T_PER_CHANNEL: tl.constexpr, CLAMP: tl.constexpr, NEEDS_I: tl.constexpr,
                             NEEDS_T: tl.constexpr, NEEDS_A: tl.constexpr, BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    acc_t = tl.zeros([BLOCK], dtype=cdt)
    lo = join_f64(lo_hi, lo_lo, acc_t)
    hi = join_f64(hi_hi, hi_lo, acc_t)
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
            tl.store(gA_ptr + (b * C + c) * nblk + blk, sA)  # per-block partial: summed in order by torch
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
    nblk = triton.cdiv(HW, BLOCK)
    _recover_kernel[(nblk * B,)](I, t, A.contiguous(), t0.contiguous(), J, C, HW, nblk, *split_f64(lo),
                                 *split_f64(hi), T_PER_CHANNEL=t.shape[1] != 1, CLAMP=clamp, BLOCK=BLOCK)
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
    nblk = triton.cdiv(HW, BLOCK)
    pA = _partials(A, B, C, nblk, needs_A)
    _recover_backward_kernel[(nblk * B,)](
        grad, I, t, A.contiguous(), t0.contiguous(), gI if needs_I else I, gt if needs_t else t, pA,
        C, HW, nblk, *split_f64(lo), *split_f64(hi), T_PER_CHANNEL=t.shape[1] != 1, CLAMP=clamp, NEEDS_I=needs_I,
        NEEDS_T=needs_t, NEEDS_A=needs_A, BLOCK=BLOCK)
    return gI, gt, _summed(pA, gA, needs_A)


# ---- synthesize_haze, transmission_from_depth, recompose_k ------------------------------------
# Same layout as recover: an image-shaped [B,C,HW] tensor, a per-pixel map [B,Cm,HW] with
# Cm in {1, C} (t, depth or K; MAP_PER_CHANNEL = Cm != 1) and [B,C] parameters (A, beta, b)
# in the compute dtype.

@triton.jit
def _synthesize_kernel(J_ptr, t_ptr, A_ptr, I_ptr, C, HW, nblk, MAP_PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    tv = tl.load(t_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            tv = tl.load(t_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        A = tl.load(A_ptr + b * C + c)
        off = (b * C + c) * HW + p
        Jv = tl.load(J_ptr + off, mask=m, other=0.0).to(cdt)
        tl.store(I_ptr + off, ((Jv - A) * tv + A).to(I_ptr.dtype.element_ty), mask=m)


@triton.jit
def _synthesize_backward_kernel(g_ptr, J_ptr, t_ptr, A_ptr, gJ_ptr, gt_ptr, gA_ptr, C, HW, nblk,
                                MAP_PER_CHANNEL: tl.constexpr, NEEDS_J: tl.constexpr, NEEDS_T: tl.constexpr,
                                NEEDS_A: tl.constexpr, BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    acc = tl.zeros([BLOCK], dtype=cdt)
    tv = tl.load(t_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            tv = tl.load(t_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        A = tl.load(A_ptr + b * C + c)
        off = (b * C + c) * HW + p
        Jv = tl.load(J_ptr + off, mask=m, other=0.0).to(cdt)
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(cdt)
        if NEEDS_J:
            tl.store(gJ_ptr + off, (g * tv).to(gJ_ptr.dtype.element_ty), mask=m)
        dt = g * (Jv - A)
        if MAP_PER_CHANNEL:
            if NEEDS_T:
                tl.store(gt_ptr + off, dt.to(gt_ptr.dtype.element_ty), mask=m)
        else:
            acc += dt
        if NEEDS_A:
            tl.store(gA_ptr + (b * C + c) * nblk + blk, tl.sum(tl.where(m, g * (1.0 - tv), 0.0), axis=0))
    if NEEDS_T and not MAP_PER_CHANNEL:
        tl.store(gt_ptr + b * HW + p, acc.to(gt_ptr.dtype.element_ty), mask=m)


@triton.jit
def _transmission_kernel(d_ptr, beta_ptr, t_ptr, C, HW, nblk, MAP_PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr):
    cdt = beta_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    dv = tl.load(d_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            dv = tl.load(d_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        beta = tl.load(beta_ptr + b * C + c)
        tl.store(t_ptr + (b * C + c) * HW + p, tl.exp(-beta * dv).to(t_ptr.dtype.element_ty), mask=m)


@triton.jit
def _transmission_backward_kernel(g_ptr, d_ptr, beta_ptr, gd_ptr, gb_ptr, C, HW, nblk, MAP_PER_CHANNEL: tl.constexpr,
                                  NEEDS_D: tl.constexpr, NEEDS_BETA: tl.constexpr, BLOCK: tl.constexpr):
    cdt = beta_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    acc = tl.zeros([BLOCK], dtype=cdt)
    dv = tl.load(d_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            dv = tl.load(d_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        beta = tl.load(beta_ptr + b * C + c)
        off = (b * C + c) * HW + p
        gt = tl.load(g_ptr + off, mask=m, other=0.0).to(cdt) * tl.exp(-beta * dv)
        dd = -beta * gt
        if MAP_PER_CHANNEL:
            if NEEDS_D:
                tl.store(gd_ptr + off, dd.to(gd_ptr.dtype.element_ty), mask=m)
        else:
            acc += dd
        if NEEDS_BETA:
            tl.store(gb_ptr + (b * C + c) * nblk + blk, tl.sum(tl.where(m, -dv * gt, 0.0), axis=0))
    if NEEDS_D and not MAP_PER_CHANNEL:
        tl.store(gd_ptr + b * HW + p, acc.to(gd_ptr.dtype.element_ty), mask=m)


@triton.jit
def _recompose_k_kernel(I_ptr, K_ptr, b_ptr, J_ptr, C, HW, nblk, MAP_PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr):
    cdt = b_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    kv = tl.load(K_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            kv = tl.load(K_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        bias = tl.load(b_ptr + b * C + c)
        off = (b * C + c) * HW + p
        Iv = tl.load(I_ptr + off, mask=m, other=0.0).to(cdt)
        tl.store(J_ptr + off, (kv * Iv - kv + bias).to(J_ptr.dtype.element_ty), mask=m)


@triton.jit
def _recompose_k_backward_kernel(g_ptr, I_ptr, K_ptr, b_ptr, gI_ptr, gK_ptr, gb_ptr, C, HW, nblk,
                                 MAP_PER_CHANNEL: tl.constexpr, NEEDS_I: tl.constexpr, NEEDS_K: tl.constexpr,
                                 NEEDS_B: tl.constexpr, BLOCK: tl.constexpr):
    cdt = b_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    acc = tl.zeros([BLOCK], dtype=cdt)
    kv = tl.load(K_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            kv = tl.load(K_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        off = (b * C + c) * HW + p
        Iv = tl.load(I_ptr + off, mask=m, other=0.0).to(cdt)
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(cdt)
        if NEEDS_I:
            tl.store(gI_ptr + off, (g * kv).to(gI_ptr.dtype.element_ty), mask=m)
        dk = g * (Iv - 1.0)
        if MAP_PER_CHANNEL:
            if NEEDS_K:
                tl.store(gK_ptr + off, dk.to(gK_ptr.dtype.element_ty), mask=m)
        else:
            acc += dk
        if NEEDS_B:
            tl.store(gb_ptr + (b * C + c) * nblk + blk, tl.sum(g, axis=0))  # masked lanes loaded 0
    if NEEDS_K and not MAP_PER_CHANNEL:
        tl.store(gK_ptr + b * HW + p, acc.to(gK_ptr.dtype.element_ty), mask=m)


def _grad_buffers(x, needed):
    return torch.empty_like(x, memory_format=torch.contiguous_format) if needed else x.new_empty(0)


def _grad_param(P, B, C, needed):
    return torch.zeros((B, C), dtype=P.dtype, device=P.device) if needed else P.new_empty(0)


def _partials(P, B, C, nblk, needed):
    """[B, C, nblk] per-block partial sums of a [B, C] parameter's gradient (every program writes
    its slot: no zeroing, no float atomics), or P itself as an unused pointer."""
    return torch.empty((B, C, nblk), dtype=P.dtype, device=P.device) if needed else P


def _summed(part, g, needed):
    """The [B, C] gradient: the partials summed by torch in a fixed order (deterministic)."""
    return part.sum(dim=2) if needed else g


def _map_forward(kernel, x, m, P):
    """out [B,C,H,W] = kernel(x, m, P) for an image x, a map m [B,1|C,H,W] and P [B,C]."""
    x, m = x.contiguous(), m.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    B, C, H, W = x.shape
    if out.numel() == 0:
        return out
    BLOCK = block_size(H * W)
    nblk = triton.cdiv(H * W, BLOCK)
    kernel[(nblk * B,)](x, m, P.contiguous(), out, C, H * W, nblk, MAP_PER_CHANNEL=m.shape[1] != 1, BLOCK=BLOCK)
    return out


def _map_backward(kernel, grad, x, m, P, needs_x, needs_m, needs_P):
    """Gradients (x, m, P) of a _map_forward op; the kernel's constexprs after HW are
    (MAP_PER_CHANNEL, NEEDS_x, NEEDS_m, NEEDS_P)."""
    x, m, grad = x.contiguous(), m.contiguous(), grad.contiguous()
    B, C, H, W = x.shape
    gx, gm, gP = _grad_buffers(x, needs_x), _grad_buffers(m, needs_m), _grad_param(P, B, C, needs_P)
    if x.numel() == 0 or not (needs_x or needs_m or needs_P):
        if needs_m:
            gm.zero_()
        return gx, gm, gP
    BLOCK = block_size(H * W)
    nblk = triton.cdiv(H * W, BLOCK)
    pP = _partials(P, B, C, nblk, needs_P)
    kernel[(nblk * B,)](
        grad, x, m, P.contiguous(), gx if needs_x else x, gm if needs_m else m, pP, C, H * W, nblk,
        m.shape[1] != 1, needs_x, needs_m, needs_P, BLOCK=BLOCK)
    return gx, gm, _summed(pP, gP, needs_P)


def synthesize_haze(J, t, A):
    """I [B,C,H,W] = (J - A) t + A."""
    return _map_forward(_synthesize_kernel, J, t, A)


def synthesize_haze_backward(grad, J, t, A, needs_J, needs_t, needs_A):
    return _map_backward(_synthesize_backward_kernel, grad, J, t, A, needs_J, needs_t, needs_A)


def transmission_from_depth(depth, beta):
    """t [B,C,H,W] = exp(-beta d), C = beta.shape[1]; depth [B,1|C,H,W]."""
    depth = depth.contiguous()
    B, _, H, W = depth.shape
    C = beta.shape[1]
    t = torch.empty((B, C, H, W), dtype=depth.dtype, device=depth.device)
    if t.numel() == 0:
        return t
    BLOCK = block_size(H * W)
    nblk = triton.cdiv(H * W, BLOCK)
    _transmission_kernel[(nblk * B,)](depth, beta.contiguous(), t, C, H * W, nblk,
                                      MAP_PER_CHANNEL=depth.shape[1] != 1, BLOCK=BLOCK)
    return t


def transmission_from_depth_backward(grad, depth, beta, needs_depth, needs_beta):
    depth, grad = depth.contiguous(), grad.contiguous()
    B, _, H, W = depth.shape
    C = beta.shape[1]
    gd, gb = _grad_buffers(depth, needs_depth), _grad_param(beta, B, C, needs_beta)
    if grad.numel() == 0 or not (needs_depth or needs_beta):
        if needs_depth:
            gd.zero_()
        return gd, gb
    BLOCK = block_size(H * W)
    nblk = triton.cdiv(H * W, BLOCK)
    pb = _partials(beta, B, C, nblk, needs_beta)
    _transmission_backward_kernel[(nblk * B,)](
        grad, depth, beta.contiguous(), gd if needs_depth else depth, pb, C, H * W, nblk,
        MAP_PER_CHANNEL=depth.shape[1] != 1, NEEDS_D=needs_depth, NEEDS_BETA=needs_beta, BLOCK=BLOCK)
    return gd, _summed(pb, gb, needs_beta)


def recompose_k(I, K, b):
    """J [B,C,H,W] = K I - K + b (AOD-Net)."""
    return _map_forward(_recompose_k_kernel, I, K, b)


def recompose_k_backward(grad, I, K, b, needs_I, needs_K, needs_b):
    return _map_backward(_recompose_k_backward_kernel, grad, I, K, b, needs_I, needs_K, needs_b)


# ---- synthesize_haze from depth, one pass ------------------------------------------------------

@triton.jit
def _synthesize_depth_kernel(J_ptr, d_ptr, A_ptr, beta_ptr, I_ptr, C, HW, nblk, MAP_PER_CHANNEL: tl.constexpr,
                             BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    dv = tl.load(d_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            dv = tl.load(d_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        A = tl.load(A_ptr + b * C + c)
        tv = tl.exp(-tl.load(beta_ptr + b * C + c) * dv)
        off = (b * C + c) * HW + p
        Jv = tl.load(J_ptr + off, mask=m, other=0.0).to(cdt)
        tl.store(I_ptr + off, ((Jv - A) * tv + A).to(I_ptr.dtype.element_ty), mask=m)


@triton.jit
def _synthesize_depth_backward_kernel(g_ptr, J_ptr, d_ptr, A_ptr, beta_ptr, gJ_ptr, gd_ptr, gA_ptr, gb_ptr, C, HW, nblk,
                                      MAP_PER_CHANNEL: tl.constexpr, NEEDS_J: tl.constexpr, NEEDS_D: tl.constexpr,
                                      NEEDS_A: tl.constexpr, NEEDS_BETA: tl.constexpr, BLOCK: tl.constexpr):
    cdt = A_ptr.dtype.element_ty
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    acc = tl.zeros([BLOCK], dtype=cdt)
    dv = tl.load(d_ptr + b * HW + p, mask=m, other=0.0).to(cdt)
    for c in range(C):
        if MAP_PER_CHANNEL:
            dv = tl.load(d_ptr + (b * C + c) * HW + p, mask=m, other=0.0).to(cdt)
        A = tl.load(A_ptr + b * C + c)
        beta = tl.load(beta_ptr + b * C + c)
        tv = tl.exp(-beta * dv)
        off = (b * C + c) * HW + p
        Jv = tl.load(J_ptr + off, mask=m, other=0.0).to(cdt)
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(cdt)
        if NEEDS_J:
            tl.store(gJ_ptr + off, (g * tv).to(gJ_ptr.dtype.element_ty), mask=m)
        gt = g * (Jv - A)  # dL/dt
        dd = -beta * tv * gt
        if MAP_PER_CHANNEL:
            if NEEDS_D:
                tl.store(gd_ptr + off, dd.to(gd_ptr.dtype.element_ty), mask=m)
        else:
            acc += dd
        if NEEDS_A:
            tl.store(gA_ptr + (b * C + c) * nblk + blk, tl.sum(tl.where(m, g * (1.0 - tv), 0.0), axis=0))
        if NEEDS_BETA:
            tl.store(gb_ptr + (b * C + c) * nblk + blk, tl.sum(tl.where(m, -dv * tv * gt, 0.0), axis=0))
    if NEEDS_D and not MAP_PER_CHANNEL:
        tl.store(gd_ptr + b * HW + p, acc.to(gd_ptr.dtype.element_ty), mask=m)


def synthesize_haze_depth(J, depth, A, beta):
    """I [B,C,H,W] = (J - A) t + A with t = exp(-beta d), in one pass."""
    J, depth = J.contiguous(), depth.contiguous()
    I = torch.empty_like(J, memory_format=torch.contiguous_format)
    B, C, H, W = J.shape
    if I.numel() == 0:
        return I
    BLOCK = block_size(H * W)
    nblk = triton.cdiv(H * W, BLOCK)
    _synthesize_depth_kernel[(nblk * B,)](J, depth, A.contiguous(), beta.contiguous(), I, C, H * W, nblk,
                                          MAP_PER_CHANNEL=depth.shape[1] != 1, BLOCK=BLOCK)
    return I


def synthesize_haze_depth_backward(grad, J, depth, A, beta, needs_J, needs_depth, needs_A, needs_beta):
    J, depth, grad = J.contiguous(), depth.contiguous(), grad.contiguous()
    B, C, H, W = J.shape
    gJ, gd = _grad_buffers(J, needs_J), _grad_buffers(depth, needs_depth)
    gA, gb = _grad_param(A, B, C, needs_A), _grad_param(beta, B, C, needs_beta)
    if J.numel() == 0 or not (needs_J or needs_depth or needs_A or needs_beta):
        if needs_depth:
            gd.zero_()
        return gJ, gd, gA, gb
    BLOCK = block_size(H * W)
    nblk = triton.cdiv(H * W, BLOCK)
    pA, pb = _partials(A, B, C, nblk, needs_A), _partials(beta, B, C, nblk, needs_beta)
    _synthesize_depth_backward_kernel[(nblk * B,)](
        grad, J, depth, A.contiguous(), beta.contiguous(), gJ if needs_J else J, gd if needs_depth else depth,
        pA, pb, C, H * W, nblk, MAP_PER_CHANNEL=depth.shape[1] != 1,
        NEEDS_J=needs_J, NEEDS_D=needs_depth, NEEDS_A=needs_A, NEEDS_BETA=needs_beta, BLOCK=BLOCK)
    return gJ, gd, _summed(pA, gA, needs_A), _summed(pb, gb, needs_beta)
