"""Triton kernels of the IICL patch ops (SPEC section 3).

``_patch_scores_kernel``: grid = B x patch rows x column tiles, on axis 0 (as every grid here:
axes 1 and 2 stop at 65535 on a GPU). A program sums the brightness
of its patch row's ``patch`` image rows into a vector of column sums over its tile (one
contiguous row segment per row and channel: coalesced), then reduces the column sums to its
patches' sums with a [patches, columns] window mask (no unfold, no gather from registers).
With stride >= patch every pixel is read at most once; with stride < patch overlapping patch
rows read their shared rows again (from L2 on a GPU).

``_patch_select_kernel``: grid = (B,), launched once per order. k rounds; each scans the scores in chunks for
the first patch, in the order of torch.sort(stable=True) (NaN largest; equal scores by lower
index), that comes after the previous pick. O(k n) per image: meant for IICL's small k.

``_gather_kernel`` / ``_gather_backward_kernel``: a copy per output element; the backward sums,
per input pixel, the patches that cover it (deterministic, no atomics; O(k) per pixel).
Half inputs are computed in float32 and float64 in float64 (the dtype of the scores buffer).
"""
import torch
import triton
import triton.language as tl

from . import INTERPRET, block_size, image_block

LUMA = (0.299, 0.587, 0.114)


@triton.jit
def _patch_scores_kernel(x_ptr, w_ptr, s_ptr, C, H, W, p, s, nH, nW, bj, tiles,
                         MEASURE: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_J: tl.constexpr):
    cdt = s_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # (b, patch row i, column tile) on axis 0
    tile = pid % tiles
    i = (pid // tiles) % nH
    b = pid // (tiles * nH)
    j0 = tile * bj
    jn = tl.minimum(nW - j0, bj)
    x0 = j0 * s
    width = (jn - 1) * s + p
    xl = tl.arange(0, BLOCK_X)
    mx = xl < width
    HW = H * W
    base = x_ptr + b * C * HW + (i * s) * W + x0 + xl
    colsum = tl.zeros([BLOCK_X], dtype=cdt)
    for dy in range(p):
        row = base + dy * W
        v = tl.load(row, mask=mx, other=0.0).to(cdt)
        if MEASURE == 0:
            v = v * tl.load(w_ptr)
        for c in range(1, C):
            u = tl.load(row + c * HW, mask=mx, other=0.0).to(cdt)
            if MEASURE == 0:
                v = v + u * tl.load(w_ptr + c)
            elif MEASURE == 1:
                v = v + u
            elif MEASURE == 2:
                v = tl.where((u < v) | (u != u), u, v)  # NaN-propagating min
            else:
                v = tl.where((u > v) | (u != u), u, v)  # NaN-propagating max
        if MEASURE == 1:
            v = v / C
        colsum += v
    jj = tl.arange(0, BLOCK_J)
    lo = jj * s
    inwin = (xl[None, :] >= lo[:, None]) & (xl[None, :] < lo[:, None] + p) & mx[None, :]
    seg = tl.sum(tl.where(inwin, colsum[None, :], 0.0), axis=1)
    area = tl.cast(p, cdt) * tl.cast(p, cdt)  # p == 1 arrives as a constexpr (no .to) on the GPU
    tl.store(s_ptr + (b * nH + i) * nW + j0 + jj, seg / area, mask=jj < jn)


@triton.jit
def _precedes(an, as_, ai, bn, bs, bi, DESC: tl.constexpr):
    """1 where (score as_, index ai, NaN flag an) comes before (bs, bi, bn) in the order of
    torch.sort(stable=True), else 0. Flags and result are int32 0/1 (the interpreter cannot
    combine 0-d booleans)."""
    lower = (ai < bi).to(tl.int32)
    if DESC:
        fin = (as_ > bs).to(tl.int32) + (as_ == bs).to(tl.int32) * lower
        one = an * (1 - bn)
    else:
        fin = (as_ < bs).to(tl.int32) + (as_ == bs).to(tl.int32) * lower
        one = bn * (1 - an)
    return an * bn * lower + one + (1 - an) * (1 - bn) * fin


@triton.jit
def _patch_select_kernel(s_ptr, n, nW, stride, k, idx_ptr, sc_ptr, cor_ptr, DESC: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cdt = s_ptr.dtype.element_ty
    row = s_ptr + b * n
    out_off = b * k
    prev_i = tl.full([], -1, tl.int64)
    prev_s = tl.full([], 0.0, cdt)
    prev_n = tl.full([], 0, tl.int32)
    for r in range(k):
        best_i = tl.full([], -1, tl.int64)
        best_s = tl.full([], 0.0, cdt)
        best_n = tl.full([], 0, tl.int32)
        for start in range(0, n, BLOCK_N):
            e = start + tl.arange(0, BLOCK_N).to(tl.int64)
            m = e < n
            sv = tl.load(row + e, mask=m, other=0.0)
            isn = sv != sv
            # candidates: not yet taken, i.e. after the previous pick in the order
            after = (_precedes(prev_n, prev_s, prev_i, isn.to(tl.int32), sv, e, DESC) + (prev_i < 0).to(tl.int32)) > 0
            cand = m & after
            cf = cand & (sv == sv)
            cn = cand & isn
            if DESC:
                mval = tl.max(tl.where(cf, sv, float("-inf")), axis=0)
            else:
                mval = tl.min(tl.where(cf, sv, float("inf")), axis=0)
            fidx = tl.min(tl.where(cf & (sv == mval), e, n), axis=0)
            nidx = tl.min(tl.where(cn, e, n), axis=0)
            any_f = (fidx < n).to(tl.int32)
            any_n = (nidx < n).to(tl.int32)
            if DESC:
                take_nan = any_n
            else:
                take_nan = any_n * (1 - any_f)
            c_i = tl.where(take_nan > 0, nidx, tl.where(any_f > 0, fidx, -1))
            c_s = tl.where(take_nan > 0, float("nan"), mval).to(cdt)
            beats = _precedes(take_nan, c_s, c_i, best_n, best_s, best_i, DESC) + (best_i < 0).to(tl.int32)
            win = (c_i >= 0).to(tl.int32) * beats
            best_i = tl.where(win > 0, c_i, best_i)
            best_s = tl.where(win > 0, c_s, best_s)
            best_n = tl.where(win > 0, take_nan, best_n)
        tl.store(idx_ptr + out_off + r, best_i)
        tl.store(sc_ptr + out_off + r, tl.load(row + best_i))
        tl.store(cor_ptr + 2 * (out_off + r), (best_i // nW) * stride)
        tl.store(cor_ptr + 2 * (out_off + r) + 1, (best_i % nW) * stride)
        prev_i = best_i
        prev_s = best_s
        prev_n = best_n


def _tiling(H, W, p, s):
    nH, nW = (H - p) // s + 1, (W - p) // s + 1
    target, cap = (4096, 1 << 20) if INTERPRET else (256, 16384)
    bj = max(1, min(nW, (target - p) // s + 1 if p < target else 1))
    while bj > 1 and triton.next_power_of_2(bj) * triton.next_power_of_2((bj - 1) * s + p) > cap:
        bj = max(1, bj // 2)
    width = (bj - 1) * s + p
    return nH, nW, bj, triton.cdiv(nW, bj), width


def patch_brightness_rank(x, patch, stride, k, measure):
    """(bright_index, bright_score, bright_corner, dark_index, dark_score, dark_corner); see
    fastdehaze.ops.patch_brightness_rank (arguments already validated)."""
    B, C, H, W = x.shape
    sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    nH, nW, bj, tiles, width = _tiling(H, W, patch, stride)
    n = nH * nW
    # separate tensors per order (outputs of a custom op must not alias each other)
    idx = [torch.empty((B, k), dtype=torch.int64, device=x.device) for _ in range(2)]
    sc = [torch.empty((B, k), dtype=sdt, device=x.device) for _ in range(2)]
    cor = [torch.empty((B, k, 2), dtype=torch.int64, device=x.device) for _ in range(2)]
    if B > 0 and k > 0:
        x = x.contiguous()
        scores = torch.empty((B, n), dtype=sdt, device=x.device)
        wts = torch.tensor(LUMA if C == 3 else (1.0,) * C, dtype=sdt, device=x.device)
        _patch_scores_kernel[(tiles * nH * B,)](x, wts, scores, C, H, W, patch, stride, nH, nW, bj, tiles,
                                                MEASURE=measure,
                                             BLOCK_X=triton.next_power_of_2(width),
                                             BLOCK_J=triton.next_power_of_2(bj))
        BLOCK_N = block_size(n, gpu_block=1024)
        for o in range(2):  # bright (descending), dark (ascending)
            _patch_select_kernel[(B,)](scores, n, nW, stride, k, idx[o], sc[o], cor[o], DESC=o == 0, BLOCK_N=BLOCK_N)
    return idx[0], sc[0], cor[0], idx[1], sc[1], cor[1]


@triton.jit
def _gather_kernel(x_ptr, c_ptr, out_ptr, C, H, W, k, p, nblk, BLOCK: tl.constexpr):
    bqc, blk, e = image_block(nblk, BLOCK)  # bqc = (b * k + q) * C + c
    pp = p * p
    me = e < pp
    c = bqc % C
    bq = bqc // C
    b = bq // k
    y = tl.load(c_ptr + 2 * bq) + e // p
    xx = tl.load(c_ptr + 2 * bq + 1) + e % p
    inside = me & (y >= 0) & (y < H) & (xx >= 0) & (xx < W)
    v = tl.load(x_ptr + ((b * C + c) * H + y) * W + xx, mask=inside, other=0.0)
    tl.store(out_ptr + bqc * pp + e, v, mask=me)


@triton.jit
def _gather_backward_kernel(g_ptr, c_ptr, gx_ptr, C, H, W, k, p, nblk, F64: tl.constexpr, BLOCK: tl.constexpr):
    bc, blk, e = image_block(nblk, BLOCK)  # bc = b * C + c
    m = e < H * W
    y = e // W
    xx = e % W
    c = bc % C
    b = bc // C
    if F64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    for q in range(k):
        bq = b * k + q
        dy = y - tl.load(c_ptr + 2 * bq)
        dx = xx - tl.load(c_ptr + 2 * bq + 1)
        inside = m & (dy >= 0) & (dy < p) & (dx >= 0) & (dx < p)
        g = tl.load(g_ptr + ((bq * C + c) * p + dy) * p + dx, mask=inside, other=0.0)
        acc += g.to(acc.dtype)
    tl.store(gx_ptr + bc * H * W + e, acc.to(gx_ptr.dtype.element_ty), mask=m)


def gather_patches(x, corners, patch):
    """[B,k,C,patch,patch] copies of x at corners [B,k,2] (y, x)."""
    B, C, H, W = x.shape
    k = corners.shape[1]
    out = torch.empty((B, k, C, patch, patch), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    BLOCK = block_size(patch * patch, gpu_block=1024)
    nblk = triton.cdiv(patch * patch, BLOCK)
    _gather_kernel[(nblk * B * k * C,)](x.contiguous(), corners.contiguous(), out, C, H, W, k, patch, nblk,
                                        BLOCK=BLOCK)
    return out


def gather_patches_backward(grad, corners, H, W):
    """grad_x [B,C,H,W]: the patches' gradients added back at their corners."""
    B, k, C, p, _ = grad.shape
    gx = torch.empty((B, C, H, W), dtype=grad.dtype, device=grad.device)
    if gx.numel() == 0:
        return gx
    BLOCK = block_size(H * W)
    nblk = triton.cdiv(H * W, BLOCK)
    _gather_backward_kernel[(nblk * B * C,)](grad.contiguous(), corners.contiguous(), gx, C, H, W, k, p, nblk, F64=grad.dtype == torch.float64, BLOCK=BLOCK)
    return gx
