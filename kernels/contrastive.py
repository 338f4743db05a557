"""Triton kernels of the contrastive distance ops (SPEC section 4).

Per layer one launch of the sum kernel (no host sync between layers): a program loads BLOCK
consecutive elements of the anchor once, sums |a - p| and each |a - n_k| in the compute dtype
(``tl.sum``: a tree, never one long sequential float32 sum) and writes its partial sums to its
row of a float64 [programs, 1 + K] table, summed by torch (no float atomics: deterministic). The dists table and the loss are then a few
tiny tensor ops on the [L, 1 + K] table. The backward kernel reads the saved dists, the
weights and the incoming gradient from device memory (no ``.item()``) and writes
    dL/da = cp sign(a - p) - cn sum_k w_k sign(a - n_k).
Features are read in the anchor's memory order: those with other strides are copied once
into it; the K negatives of a layer are read as one [K, N] block (a list of tensors that is
not already laid out that way, e.g. slices of one batched VGG output, is copied into one).
"""
import torch
import triton
import triton.language as tl

from . import block_size, join_f64, split_f64


@triton.jit
def _sum_kernel(a_ptr, p_ptr, n_ptr, w_ptr, part_ptr, N, n_stride, K, Q,
                ABLATION: tl.constexpr, BLOCK: tl.constexpr):
    cdt = w_ptr.dtype.element_ty
    blk = tl.program_id(0).to(tl.int64)
    i = blk * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    a = tl.load(a_ptr + i, mask=m, other=0.0).to(cdt)
    p = tl.load(p_ptr + i, mask=m, other=0.0).to(cdt)
    s = tl.sum(tl.where(m, tl.abs(a - p), 0.0), axis=0)
    row = part_ptr + blk * Q  # this program's partials [Q] (float64), summed in order by torch
    tl.store(row, s.to(tl.float64))
    if not ABLATION:
        nk = n_ptr  # negative k: the pointer advances by n_stride (no k * n_stride in int32)
        for k in range(K):
            n = tl.load(nk + i, mask=m, other=0.0).to(cdt)
            s = tl.sum(tl.where(m, tl.abs(a - n), 0.0), axis=0)
            tl.store(row + 1 + k, s.to(tl.float64))
            nk += n_stride


@triton.jit
def _sign(x):
    # sign(0) = sign(NaN) = 0, as torch.sign (the gradient of abs)
    return (tl.where(x > 0, 1.0, 0.0) - tl.where(x < 0, 1.0, 0.0)).to(x.dtype)


@triton.jit
def _backward_kernel(g_ptr, a_ptr, p_ptr, n_ptr, w_ptr, dists_ptr, lw_ptr, out_ptr, N, n_stride, K, row, eps_hi, eps_lo,
                     ABLATION: tl.constexpr, BLOCK: tl.constexpr):
    cdt = w_ptr.dtype.element_ty
    g = tl.load(g_ptr).to(cdt)
    lam = tl.load(lw_ptr)
    numel = tl.cast(N, cdt)  # N == 1 arrives as a constexpr (no .to) on the GPU
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    a = tl.load(a_ptr + i, mask=m, other=0.0).to(cdt)
    p = tl.load(p_ptr + i, mask=m, other=0.0).to(cdt)
    if ABLATION:
        out = (g * lam / numel) * _sign(a - p)
    else:
        den = tl.load(w_ptr) * tl.load(dists_ptr + row + 1)
        for k in range(1, K):
            den += tl.load(w_ptr + k) * tl.load(dists_ptr + row + 1 + k)
        den = den + join_f64(eps_hi, eps_lo, den)  # eps as a float32 pair: exact in float64
        cp = g * lam / (numel * den)
        cn = cp * tl.load(dists_ptr + row) / den
        out = cp * _sign(a - p)
        nk = n_ptr
        for k in range(K):
            n = tl.load(nk + i, mask=m, other=0.0).to(cdt)
            out -= (cn * tl.load(w_ptr + k)) * _sign(a - n)
            nk += n_stride
    tl.store(out_ptr + i, out.to(out_ptr.dtype.element_ty), mask=m)


def _conform(x, ref):
    if x.stride() == ref.stride():
        return x
    return torch.empty_like(ref).copy_(x)


def _neg_block(negs, ref):
    """The K negatives of a layer as (base tensor, element stride between negatives), in ref's layout."""
    K, N = len(negs), ref.numel()
    if K == 0:
        return ref, 0
    if all(n.stride() == ref.stride() for n in negs):
        if K == 1:
            return negs[0], 0
        step = negs[1].data_ptr() - negs[0].data_ptr()
        es = ref.element_size()
        if step > 0 and step % es == 0 and step // es >= N and all(
                n.data_ptr() - negs[0].data_ptr() == k * step and n.untyped_storage().data_ptr()
                == negs[0].untyped_storage().data_ptr() for k, n in enumerate(negs)):
            return negs[0], step // es
    buf = torch.empty(K * N, dtype=ref.dtype, device=ref.device)
    for k, n in enumerate(negs):
        torch.as_strided(buf, ref.shape, ref.stride(), k * N).copy_(n)
    return torch.as_strided(buf, ref.shape, ref.stride(), 0), N


def _layers(anchors, positives, negatives, refs):
    L = len(anchors)
    K = len(negatives) // L
    out = []
    for l in range(L):
        ref = refs[l]
        a = _conform(anchors[l], ref)
        p = _conform(positives[l], ref)
        n, stride = _neg_block(list(negatives[l * K:(l + 1) * K]), ref)
        out.append((a, p, n, stride))
    return out, K


def _dense_ref(a):
    return a if a.is_contiguous() or a.is_contiguous(memory_format=torch.channels_last) else a.contiguous()


def contrastive_loss(anchors, positives, negatives, layer_weights, negative_weights, eps, ablation):
    """(loss 0-d, dists [L, 1 + K]) in the compute dtype of the weights."""
    refs = [_dense_ref(a) for a in anchors]
    layers, K = _layers(anchors, positives, negatives if not ablation else [], refs)
    K = len(negatives) // len(anchors)
    L, Q = len(anchors), 1 + K
    cdt = negative_weights.dtype
    dev = anchors[0].device
    w = negative_weights.contiguous() if K > 0 else torch.zeros(1, dtype=cdt, device=dev)
    rows = []
    for l, (a, p, n, stride) in enumerate(layers):
        N = a.numel()
        if N == 0:
            rows.append(torch.zeros(Q, dtype=torch.float64, device=dev))
            continue
        BLOCK = block_size(N, gpu_block=2048)
        nblk = triton.cdiv(N, BLOCK)
        part = torch.zeros((nblk, Q), dtype=torch.float64, device=dev) if ablation else \
            torch.empty((nblk, Q), dtype=torch.float64, device=dev)
        _sum_kernel[(nblk,)](a, p, n, w, part, N, stride, K, Q, ABLATION=ablation, BLOCK=BLOCK)
        rows.append(part.sum(dim=0))
    sums = torch.stack(rows)
    numel = torch.tensor([float(a.numel()) for a in anchors], dtype=torch.float64).to(dev, non_blocking=True)
    dists = (sums / numel[:, None]).to(cdt)
    if ablation:
        dists[:, 1:] = 0
        ratio = dists[:, 0]
    else:
        ratio = dists[:, 0] / ((dists[:, 1:] * negative_weights).sum(1) + eps)
    loss = (layer_weights * ratio).sum()
    return loss, dists


def contrastive_loss_backward(grad, anchors, positives, negatives, layer_weights, negative_weights, dists, eps,
                              ablation):
    grads = [torch.empty_like(a) for a in anchors]
    layers, K = _layers(anchors, positives, negatives if not ablation else [], grads)
    K = len(negatives) // len(anchors)
    Q = 1 + K
    cdt = negative_weights.dtype
    g = grad.to(cdt).reshape(1).contiguous()
    d = dists.to(cdt).contiguous()
    lw = layer_weights.contiguous()
    w = negative_weights.contiguous() if K > 0 else torch.zeros(1, dtype=cdt, device=g.device)
    for l, (a, p, n, stride) in enumerate(layers):
        N = a.numel()
        if N == 0:
            continue
        BLOCK = block_size(N, gpu_block=2048)
        _backward_kernel[(triton.cdiv(N, BLOCK),)](g, a, p, n, w, d, lw[l:], grads[l], N, stride, K, l * Q, *split_f64(eps),
                                                   ABLATION=ablation, BLOCK=BLOCK)
    return grads


def contrastive_distance(anchor, positive, negatives, negative_weights, eps, ablation):
    lw = torch.ones(1, dtype=negative_weights.dtype, device=anchor.device)
    return contrastive_loss([anchor], [positive], negatives, lw, negative_weights, eps, ablation)


def contrastive_distance_backward(grad, anchor, positive, negatives, negative_weights, dists, eps, ablation):
    lw = torch.ones(1, dtype=negative_weights.dtype, device=anchor.device)
    return contrastive_loss_backward(grad, [anchor], [positive], negatives, lw, negative_weights, dists, eps,
                                     ablation)[0]
