"""Triton kernels of the dark channel prior ops (SPEC section 2).

Window min/max: the van Herk / Gil-Werman running extremum of csrc/include/fastdehaze/dcp_math.h
(blocks of w = 2r+1 aligned at 0, suffix extrema h stored in a scratch, prefix extremum g
carried; 3 comparisons per element whatever the patch). One program handles BLOCK lines
(lanes) and walks along them: first along the rows (lanes = rows of all images; the channel
extremum, optionally of I_c / A_c, is formed on the way), then down the columns (lanes =
columns). (value, position) pairs are carried when the backward needs the argument; ties keep
the lower position, which with rows first and columns second gives SPEC's rule (first extremum
scanning the window row-major, lowest channel within a pixel).

atmospheric_light: radix select on order-preserving uint32/uint64 keys of the dark channel
(8-bit digits, one histogram kernel per digit; the digit is chosen on the device with torch
ops, no host sync), then a kernel that sums the pixels above the threshold and the first ones
equal to it (per-block counts + an exclusive cumsum give each pixel its rank among the ties).
Batch and pixel blocks share grid axis 0 (``kernels.image_block``). Deterministic: the
histograms add int32 counts (exact in any order) and the sums are per-block partials summed by
torch, no float atomics.
"""
import torch
import triton
import triton.language as tl

from . import INTERPRET, block_size, image_block, join_f64, split_f64

A_MIN = 1e-6
#: A_MIN as the kernels read it: a kernel may only read module globals that are tl.constexpr
#: (a plain float compiles under the interpreter but is a NameError in Triton's code generator).
_A_MIN = tl.constexpr(A_MIN)


@triton.jit
def _better(a, b, IS_MAX: tl.constexpr):
    if IS_MAX:
        s = a > b
    else:
        s = a < b
    return s | ((a != a) & (b == b))


@triton.jit
def _line_kernel(I_ptr, A_ptr, src_ptr, pre_v_ptr, pre_c_ptr, h_v_ptr, h_a_ptr, out_ptr, out_a_ptr,
                 n_lanes, C, H, W, n, r, omega_hi, omega_lo,
                 FIRST: tl.constexpr, SCALE: tl.constexpr, POST: tl.constexpr, ARG: tl.constexpr,
                 IS_MAX: tl.constexpr, BLOCK: tl.constexpr):
    """Running extremum along lines. FIRST: lanes are the rows (b, y) of I; the channel extremum
    (of I_c * 1/max(A_c, A_MIN) with SCALE) is written to pre_v (and its channel to pre_c) and
    filtered along the row. Otherwise lanes are the columns (b, x) of src [B, H, W]. Output value
    (1 - omega v with POST; omega = omega_hi + omega_lo, a split_f64 pair) to out; with ARG the
    winner's position along the line to out_a."""
    cdt = h_v_ptr.dtype.element_ty
    lane = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lm = lane < n_lanes
    if IS_MAX:
        ident = float("-inf")
    else:
        ident = float("inf")
    if FIRST:
        b = lane // H
        y = lane % H
        base = lane * W          # into pre_v / out [B*H, W]
        stride = 1
        HW = H * W
        for p in range(0, n):
            off = b * C * HW + y * W + p
            v = tl.load(I_ptr + off, mask=lm, other=ident).to(cdt)
            if SCALE:
                a0 = tl.load(A_ptr + b * C, mask=lm, other=1.0).to(cdt)
                v = v / tl.where(a0 < _A_MIN, _A_MIN, a0)
            best_c = tl.zeros([BLOCK], dtype=tl.int32)
            for c in range(1, C):
                vc = tl.load(I_ptr + off + c * HW, mask=lm, other=ident).to(cdt)
                if SCALE:
                    ac = tl.load(A_ptr + b * C + c, mask=lm, other=1.0).to(cdt)
                    vc = vc / tl.where(ac < _A_MIN, _A_MIN, ac)
                take = _better(vc, v, IS_MAX)
                v = tl.where(take, vc, v)
                best_c = tl.where(take, c, best_c)
            tl.store(pre_v_ptr + base + p, v, mask=lm)
            if ARG:
                tl.store(pre_c_ptr + base + p, best_c, mask=lm)
        tl.debug_barrier()
        vals_ptr = pre_v_ptr
        obase = base
    else:
        b = lane // W
        x = lane % W
        base = b * H * W + x
        stride = W
        vals_ptr = src_ptr
        obase = base
    w = 2 * r + 1
    hbase = lane * n
    # suffix extrema within blocks, right to left (ties: the lower position)
    hv = tl.full([BLOCK], ident, dtype=cdt)
    ha = tl.zeros([BLOCK], dtype=tl.int32)
    for i in range(0, n):
        p = n - 1 - i
        v = tl.load(vals_ptr + base + p * stride, mask=lm, other=ident).to(cdt)
        is_end = ((p % w) == (w - 1)) | (p == n - 1)
        keep = _better(hv, v, IS_MAX) & (is_end == 0)
        hv = tl.where(keep, hv, v)
        ha = tl.where(keep, ha, p)
        tl.store(h_v_ptr + hbase + p, hv, mask=lm)
        if ARG:
            tl.store(h_a_ptr + hbase + p, ha, mask=lm)
    tl.debug_barrier()
    gv = tl.full([BLOCK], ident, dtype=cdt)
    ga = tl.zeros([BLOCK], dtype=tl.int32)
    for p in range(0, n + r):
        if p < n:
            v = tl.load(vals_ptr + base + p * stride, mask=lm, other=ident).to(cdt)
            take = _better(v, gv, IS_MAX) | ((p % w) == 0)
            gv = tl.where(take, v, gv)
            ga = tl.where(take, p, ga)
        xo = p - r
        if xo >= 0:
            lo = tl.maximum(xo - r, 0)
            hi = tl.minimum(xo + r, n - 1)
            hl = tl.load(h_v_ptr + hbase + lo, mask=lm, other=ident)
            same = (lo // w) == (hi // w)
            use_g = (same & ((lo % w) == 0)) | ((same == 0) & _better(gv, hl, IS_MAX))
            ov = tl.where(use_g, gv, hl)
            if POST:
                ov = 1.0 - join_f64(omega_hi, omega_lo, ov) * ov
            tl.store(out_ptr + obase + xo * stride, ov.to(out_ptr.dtype.element_ty), mask=lm)
            if ARG:
                hla = tl.load(h_a_ptr + hbase + lo, mask=lm, other=0)
                tl.store(out_a_ptr + obase + xo * stride, tl.where(use_g, ga, hla), mask=lm)


def _cdt(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# GPU line blocks: one warp of 32 lanes per program, one thread per line (BLOCK=64 with the
# default 4 warps left half of the 128 threads replicas and made half as many programs: for a
# 4.9 MP photo 1800 rows are 57 programs instead of 29). Under the interpreter block_size()
# takes larger blocks and num_warps does nothing.
_LINE_BLOCK, _LINE_WARPS = 32, 1


def _lines(I, patch, is_max, A=None, omega=0.0, arg=False, out_dtype=None):
    """Both passes. Returns (out [B,1,H,W], row winners x [B,H,W], column winners y [B,H,W],
    channel winners [B,H,W]) (the last three only with arg)."""
    I = I.contiguous()
    B, C, H, W = I.shape
    cdt = _cdt(I)
    r = patch // 2
    dev = I.device
    pre_v = torch.empty((B, H, W), dtype=cdt, device=dev)
    pre_c = torch.empty((B, H, W), dtype=torch.int32, device=dev) if arg else pre_v
    rows_v = torch.empty((B, H, W), dtype=cdt, device=dev)
    rows_a = torch.empty((B, H, W), dtype=torch.int32, device=dev) if arg else rows_v
    out = torch.empty((B, 1, H, W), dtype=out_dtype or I.dtype, device=dev)
    cols_a = torch.empty((B, H, W), dtype=torch.int32, device=dev) if arg else out
    if out.numel() == 0:
        return out, rows_a, cols_a, pre_c
    A_ = A.contiguous() if A is not None else pre_v
    # rows
    n_lanes = B * H
    BLOCK = block_size(n_lanes, gpu_block=_LINE_BLOCK, interpret_cap=4096)
    h_v = torch.empty((n_lanes * W,), dtype=cdt, device=dev)
    h_a = torch.empty((n_lanes * W,), dtype=torch.int32, device=dev) if arg else h_v
    _line_kernel[(triton.cdiv(n_lanes, BLOCK),)](
        I, A_, pre_v, pre_v, pre_c, h_v, h_a, rows_v, rows_a, n_lanes, C, H, W, W, r, 0.0, 0.0,
        FIRST=True, SCALE=A is not None, POST=False, ARG=arg, IS_MAX=is_max, BLOCK=BLOCK, num_warps=_LINE_WARPS)
    # columns
    n_lanes = B * W
    BLOCK = block_size(n_lanes, gpu_block=_LINE_BLOCK, interpret_cap=4096)
    h_v = torch.empty((n_lanes * H,), dtype=cdt, device=dev)
    h_a = torch.empty((n_lanes * H,), dtype=torch.int32, device=dev) if arg else h_v
    _line_kernel[(triton.cdiv(n_lanes, BLOCK),)](
        I, A_, rows_v, pre_v, pre_c, h_v, h_a, out, cols_a, n_lanes, C, H, W, H, r, *split_f64(omega),
        FIRST=False, SCALE=False, POST=A is not None, ARG=arg, IS_MAX=is_max, BLOCK=BLOCK, num_warps=_LINE_WARPS)
    return out, rows_a, cols_a, pre_c


def channel_window(I, patch, is_max):
    """dark_channel / bright_channel: [B,1,H,W] in I's dtype."""
    return _lines(I, patch, is_max)[0]


def channel_window_backward(grad, I, patch, is_max):
    """grad_I [B,C,H,W]: each output's gradient to its first extremal element."""
    B, C, H, W = I.shape
    if I.numel() == 0:
        return torch.zeros_like(I, memory_format=torch.contiguous_format)
    _, rows_a, cols_a, pre_c = _lines(I, patch, is_max, arg=True, out_dtype=_cdt(I))
    ys = cols_a.long()                                                   # [B,H,W] winner row
    xs = torch.gather(rows_a.long(), 1, ys)                              # winner column
    cs = torch.gather(pre_c.long().reshape(B, H * W), 1, (ys * W + xs).reshape(B, H * W))
    target = cs * (H * W) + (ys * W + xs).reshape(B, H * W)
    acc = torch.zeros((B, C * H * W), dtype=_cdt(I), device=I.device)
    acc.scatter_add_(1, target, grad.reshape(B, H * W).to(acc.dtype))
    return acc.reshape(B, C, H, W).to(I.dtype)


def transmission(I, A, omega, patch):
    """1 - omega * dark_channel(I / max(A, A_MIN)) [B,1,H,W] in I's dtype; A [B,C] compute dtype."""
    return _lines(I, patch, False, A=A, omega=omega)[0]


# ---- atmospheric light ----------------------------------------------------------------------

@triton.jit
def _keys(d, KEY64: tl.constexpr):
    """(bits, ordered) int64 keys of dark values: ``ordered`` compares like the values (NaN
    largest), ``bits`` is its unsigned-order bit pattern, cut into 8-bit digits for the radix."""
    if KEY64:
        i = d.to(tl.float64).to(tl.int64, bitcast=True)
        o = i ^ ((i >> 63) & 0x7FFFFFFFFFFFFFFF)
        o = tl.where(d != d, 0x7FFFFFFFFFFFFFFF, o)
        bits = o ^ (-9223372036854775807 - 1)
    else:
        u = d.to(tl.float32).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        o = tl.where((u >> 31) != 0, u ^ 0xFFFFFFFF, u | 0x80000000)
        o = tl.where(d != d, 0xFFFFFFFF, o)
        bits = o
    return bits, o


@triton.jit
def _thr_ordered(thr_bits, KEY64: tl.constexpr):
    if KEY64:
        return thr_bits ^ (-9223372036854775807 - 1)
    else:
        return thr_bits


@triton.jit
def _hist_kernel(dark_ptr, prefix_ptr, hist_ptr, HW, nblk, shift, mask,
                 KEY64: tl.constexpr, BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    d = tl.load(dark_ptr + b * HW + p, mask=m, other=0.0)
    bits, o = _keys(d, KEY64)
    prefix = tl.load(prefix_ptr + b)
    match = m & ((bits & mask) == prefix)
    digit = ((bits >> shift) & 0xFF).to(tl.int32)
    digit = tl.where(match, digit, 256)  # bins 256.. collect the non-matching ones
    h = tl.histogram(digit, 512)
    bins = tl.arange(0, 512)
    tl.atomic_add(hist_ptr + b * 256 + bins, h, mask=bins < 256)


@triton.jit
def _eq_count_kernel(dark_ptr, thr_ptr, cnt_ptr, HW, nblk, KEY64: tl.constexpr, BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    bits, o = _keys(tl.load(dark_ptr + b * HW + p, mask=m, other=0.0), KEY64)
    eq = m & (o == _thr_ordered(tl.load(thr_ptr + b), KEY64))
    tl.store(cnt_ptr + b * nblk + blk, tl.sum(eq.to(tl.int32), axis=0))


@triton.jit
def _select_sum_kernel(I_ptr, dark_ptr, thr_ptr, need_ptr, before_ptr, sums_ptr, C, HW, nblk,
                       KEY64: tl.constexpr, BLOCK: tl.constexpr):
    b, blk, p = image_block(nblk, BLOCK)
    m = p < HW
    bits, o = _keys(tl.load(dark_ptr + b * HW + p, mask=m, other=0.0), KEY64)
    thr = _thr_ordered(tl.load(thr_ptr + b), KEY64)
    eq = m & (o == thr)
    rank = tl.cumsum(eq.to(tl.int32), axis=0) - 1 + tl.load(before_ptr + b * nblk + blk)
    take = m & ((o > thr) | (eq & (rank < tl.load(need_ptr + b))))
    for c in range(0, C):
        v = tl.load(I_ptr + (b * C + c) * HW + p, mask=take, other=0.0).to(sums_ptr.dtype.element_ty)
        tl.store(sums_ptr + (b * C + c) * nblk + blk, tl.sum(v, axis=0))  # partials [B, C, nblk]


def atmospheric_light(I, dark, k):
    """A [B,C] (compute dtype): mean of I over the k largest dark values (stable, NaN largest)."""
    I, dark = I.contiguous(), dark.contiguous()
    B, C, H, W = I.shape
    HW = H * W
    cdt = _cdt(I)
    dev = I.device
    if B == 0:
        return torch.empty((B, C), dtype=cdt, device=dev)
    if HW == 0:
        return torch.full((B, C), float("nan"), dtype=cdt, device=dev)
    key64 = cdt == torch.float64
    nbits = 64 if key64 else 32
    k = min(int(k), HW)
    BLOCK = block_size(HW, gpu_block=1024, interpret_cap=8192)
    nblk = triton.cdiv(HW, BLOCK)
    prefix = torch.zeros(B, dtype=torch.int64, device=dev)  # bits of the threshold found so far
    kk = torch.full((B,), k, dtype=torch.int64, device=dev)  # rank still to find below prefix
    mask = 0
    for shift in range(nbits - 8, -1, -8):
        hist = torch.zeros((B, 256), dtype=torch.int32, device=dev)
        _hist_kernel[(nblk * B,)](dark, prefix, hist, HW, nblk, shift, mask, KEY64=key64, BLOCK=BLOCK)
        # from the largest digit down: the first digit where the running count reaches kk
        cum = torch.cumsum(hist.flip(1).to(torch.int64), dim=1)          # cum[:, j]: digits >= 255-j
        j = torch.searchsorted(cum, kk.unsqueeze(1)).squeeze(1).clamp(max=255)
        above = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0).unsqueeze(1)).squeeze(1),
                            torch.zeros_like(kk))
        kk = kk - above
        prefix = prefix | ((255 - j) << shift)
        mask = _mask_bits(nbits, shift)
    cnt = torch.empty((B, nblk), dtype=torch.int32, device=dev)
    _eq_count_kernel[(nblk * B,)](dark, prefix, cnt, HW, nblk, KEY64=key64, BLOCK=BLOCK)
    before = (torch.cumsum(cnt, dim=1) - cnt).to(torch.int32).contiguous()
    sums = torch.empty((B, C, nblk), dtype=cdt, device=dev)
    _select_sum_kernel[(nblk * B,)](I, dark, prefix, kk.to(torch.int32), before, sums, C, HW, nblk,
                                    KEY64=key64, BLOCK=BLOCK)
    return sums.sum(dim=2) / k


def _mask_bits(nbits, shift):
    """Bits at and above ``shift`` (as a signed 64-bit value)."""
    m = ((1 << nbits) - 1) ^ ((1 << shift) - 1)
    if m >= (1 << 63):
        m -= 1 << 64
    return m


__all__ = ["channel_window", "channel_window_backward", "transmission", "atmospheric_light", "INTERPRET"]
