"""Benchmarks of the contrastive distance (SPEC section 4), forward + backward.

Cases: the five VGG19 feature shapes (relu1_1..relu5_1) of a [2,3,256,256] batch on the CPU
([8,3,256,256] on the GPU, ``gpu_cases``), with 1 negative (AECR-Net) and 6 (C2PNet).
Providers: ``fused`` (fastdehaze.ops.contrastive_loss, C++ CPU: with anchors that need a
gradient this is the packed-signs form, whose backward reads 2 bits per pair and element
instead of the features; see csrc/cpu/contrastive.cpp), ``eager`` (the loss as
AECR-Net / C2PNet write it: one nn.L1Loss per layer and negative), ``compile``
(torch.compile of that eager code). Peak memory: each variant in its own process
(``test_peak_rss``, reported in extra_info; the inputs stay alive there, so the fused path's
saving from not keeping positives and negatives for the backward does not show).

Fairness notes. ``eager`` is the sources' loop (one ``nn.L1Loss`` per layer and negative, the
negatives' sum weighted as C2PNet does; for K = 1 the extra ``1.0 *`` of a scalar is free).
``compile`` gets its own compiled function per K (no recompilation churn between the cases)
and two warm-up steps (compilation, then one run) before the timed rounds, like the others.
The fused kernels ask Linux for transparent huge pages on their large fresh outputs
(gradients, packed signs; madvise); eager and compile allocate through PyTorch's default CPU
allocator, which does so only with ``THP_MEM_ALLOC_ENABLE=1`` in the environment: set it to
give them the same benefit (it applies to every allocation of the process, so to all three
providers). On a shared
machine run each comparison twice and compare minima as well as medians.

    python -m pytest benchmarks/bench_contrastive.py --benchmark-only -s
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastdehaze.ops as F
from benchmarks.common import Case, compiled, peak_rss_of, tensor_bytes

LW = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def vgg_shapes(B=2, H=256, W=256):
    return [(B, 64, H, W), (B, 128, H // 2, W // 2), (B, 256, H // 4, W // 4), (B, 512, H // 8, W // 8),
            (B, 512, H // 16, W // 16)]


def make_features(shapes, K, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    A = [torch.rand(s, generator=g, device=device, dtype=dtype).requires_grad_() for s in shapes]
    P = [torch.rand(s, generator=g, device=device, dtype=dtype) for s in shapes]
    N = [torch.rand((K,) + s, generator=g, device=device, dtype=dtype) for s in shapes]
    return A, P, N


def eager_loss(A, P, N, w):
    """AECR-Net ContrastLoss / C2PNet C2R on given features, as the sources write it."""
    l1 = nn.L1Loss()
    loss = 0
    for i in range(len(A)):
        d_ap = l1(A[i], P[i].detach())
        den = 0
        for k in range(len(w)):
            den = den + w[k] * l1(A[i], N[i][k].detach())
        loss = loss + LW[i] * d_ap / (den + 1e-7)
    return loss


def fused_loss(A, P, N, w, backend="cpu"):
    return F.contrastive_loss(A, P, N, LW, w, backend=backend)


def _weights(K):
    return tuple([1.0 / K] * K)


def _step(fn, A, P, N, w):
    loss = fn(A, P, N, w)
    torch.autograd.grad(loss, A)
    return loss


_compiled = {}


def _provider(name, K=None):
    if name == "fused":
        return fused_loss
    if name == "eager":
        return eager_loss
    if (name, K) not in _compiled:  # one compiled function per case: no recompilation between cases
        _compiled[name, K] = compiled(eager_loss)
    return _compiled[name, K]


_allocator_warm: set = set()


@pytest.mark.parametrize("K", [1, 6])
@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_contrastive_fwd_bwd(benchmark, provider, K):
    benchmark.group = f"contrastive fwd+bwd 5 VGG19 layers of [2,3,256,256] K={K}"
    A, P, N = make_features(vgg_shapes(), K)
    w = _weights(K)
    fn = _provider(provider, K)
    if K not in _allocator_warm:
        # glibc raises its mmap threshold (up to 32 MiB) after large frees, so a provider timed
        # after eager's big temporaries gets recycled heap pages where one timed first pays page
        # faults for fresh mmap'd gradients: give every provider the same allocator state.
        _step(eager_loss, A, P, N, w)
        _allocator_warm.add(K)
    for _ in range(2):  # warm-up (compiles the compile provider)
        _step(fn, A, P, N, w)
    rounds = 5 if provider == "eager" else 15  # eager takes 0.5-3 s a step
    benchmark.pedantic(_step, args=(fn, A, P, N, w), rounds=rounds, iterations=1)


_RSS_CODE = """
import torch
from benchmarks.bench_contrastive import make_features, vgg_shapes, _provider, _step, _weights
A, P, N = make_features(vgg_shapes(), {K})
fn = _provider({provider!r}, {K})
for _ in range(2):
    _step(fn, A, P, N, _weights({K}))
"""


@pytest.mark.parametrize("K", [1, 6])
def test_peak_rss(benchmark, K):
    """Peak resident memory of one fwd+bwd step per provider (each in its own process), minus the
    inputs' baseline (a process that only builds the features)."""
    benchmark.group = f"contrastive peak RSS K={K}"
    base = peak_rss_of("from benchmarks.bench_contrastive import make_features, vgg_shapes\n"
                       f"A, P, N = make_features(vgg_shapes(), {K})")
    out = {}
    for prov in ("fused", "eager", "compile"):
        out[prov] = (peak_rss_of(_RSS_CODE.format(K=K, provider=prov)) - base) / 2**20
    benchmark.extra_info.update({f"peak_rss_MiB_{k}": round(v, 1) for k, v in out.items()})
    print(f"\npeak RSS above inputs, K={K}: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in out.items()))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def gpu_cases(device, small=False):
    """fwd+bwd cases for benchmarks/gpu_check.py: 5 VGG19 layers of [8,3,256,256] (small: [1,3,64,64])."""
    B, H = (1, 64) if small else (8, 256)
    fused_b = "cuda" if torch.device(device).type == "cuda" else "cpu"  # the C++ CPU kernel stands in on --cpu
    cases = []
    for K in (1, 6):
        for dtype in (torch.float32, torch.bfloat16):
            A, P, N = make_features(vgg_shapes(B, H, H), K, device=device, dtype=dtype)
            w = _weights(K)
            n_el = sum(a.numel() for a in A)
            es = A[0].element_size()
            # fwd reads a, p, n_k; bwd reads them again and writes grad a
            nbytes = (2 * (2 + K) + 1) * n_el * es
            comp = compiled(eager_loss)
            cases.append(Case(
                name=f"contrastive fwd+bwd {str(dtype).replace('torch.', '')} K={K} VGG19 of [{B},3,{H},{H}]",
                bytes=nbytes,
                providers={
                    fused_b: lambda A=A, P=P, N=N, w=w, fb=fused_b: _step(lambda *a: fused_loss(*a, backend=fb), A, P,
                                                                          N, w),
                    "triton": lambda A=A, P=P, N=N, w=w: _step(lambda *a: fused_loss(*a, backend="triton"), A, P, N,
                                                               w),
                    "eager": lambda A=A, P=P, N=N, w=w: _step(eager_loss, A, P, N, w),
                    "compile": lambda A=A, P=P, N=N, w=w, comp=comp: _step(comp, A, P, N, w),
                }))
    return cases


__all__ = ["gpu_cases", "tensor_bytes"]
