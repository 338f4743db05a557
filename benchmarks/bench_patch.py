"""Benchmarks of the IICL patch ops (SPEC section 3; issue 4 items 1 and 5).

    pytest benchmarks/bench_patch.py --benchmark-only --benchmark-columns=min,median,rounds

Cases (CPU, one run, grouped so that the ratios come from one table):

* ``patch-rank-8x3x512x512-p32``: brightest/darkest 4 patches of 32x32 (stride 32, luma) per
  image of a float32 [8,3,512,512] batch. Providers ``fused`` (the C++ ``patch_brightness_rank``),
  ``eager`` (as research code writes it: ``F.unfold`` of the image, luma of the unfolded
  patches, mean, ``torch.topk`` largest and smallest, corners from the indices), ``compile``
  (``torch.compile`` of that eager code, warmed up first). Issue 4 asks fused >= 5x eager.
* ``patch-rank-...-p32-s16``: the same with overlapping patches (stride 16).
* ``gather-8x3x512x512-k4-p32``: ``gather_patches`` forward + backward of 2 x 4 patches vs the
  eager slicing + ``torch.stack`` version. The backward gets a fixed upstream gradient
  (``grad_outputs``), not a loss: with ``.square().sum()`` the fused and eager rows ran the loss
  and its backward as 5 eager ATen ops (5 OpenMP fork/joins, each up to a scheduler tick when
  another process holds a core) that ``compile`` fused into its own gather kernels, so they timed
  the loss as much as the gather. Every provider gets one warm-up call (only ``compile`` had one):
  the first ``grad_outputs`` call imports sympy (~0.3 s), which made pytest-benchmark calibrate the
  first row (fused) to 5 cold rounds.

``gpu_cases(device, small)`` gives benchmarks/gpu_check.py the same cases on a GPU.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastdehaze.ops as ops
from benchmarks.common import Case, compiled, tensor_bytes

SHAPE, PATCH, K = (8, 3, 512, 512), 32, 4


# ---- the eager versions, as research code writes them ------------------------------------------

def eager_rank(x, patch=PATCH, stride=PATCH, k=K):
    """Unfold + mean + topk: the brightest and darkest k patches (indices, scores, corners)."""
    B, C, H, W = x.shape
    nW = (W - patch) // stride + 1
    cols = F.unfold(x, kernel_size=patch, stride=stride)            # [B, C*p*p, L]
    cols = cols.view(B, C, patch * patch, -1)
    luma = 0.299 * cols[:, 0] + 0.587 * cols[:, 1] + 0.114 * cols[:, 2]   # [B, p*p, L]
    scores = luma.mean(1)                                              # [B, L]
    bv, bi = torch.topk(scores, k, dim=1)
    dv, di = torch.topk(scores, k, dim=1, largest=False)
    bc = torch.stack([bi // nW * stride, bi % nW * stride], -1)
    dc = torch.stack([di // nW * stride, di % nW * stride], -1)
    return bi, bv, bc, di, dv, dc


def eager_gather(x, corners, patch=PATCH):
    B, k = corners.shape[:2]
    cl = corners.tolist()
    return torch.stack([torch.stack([x[b, :, y:y + patch, xx:xx + patch] for (y, xx) in cl[b]]) for b in range(B)])


def _image(shape=SHAPE, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=g).to(device=device, dtype=dtype)


# ---- CPU benchmarks (pytest-benchmark) ---------------------------------------------------------

RANK_CASES = {"p32": (PATCH, PATCH), "p32-s16": (PATCH, PATCH // 2)}


@pytest.mark.parametrize("case", list(RANK_CASES))
@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_rank(benchmark, case, provider):
    patch, stride = RANK_CASES[case]
    benchmark.group = f"patch-rank-8x3x512x512-{case}"
    x = _image()
    if provider == "fused":
        fn = lambda: ops.patch_brightness_rank(x, patch, stride, K, backend="cpu")  # noqa: E731
    elif provider == "eager":
        fn = lambda: eager_rank(x, patch, stride)  # noqa: E731
    else:
        c = compiled(eager_rank)
        fn = lambda: c(x, patch, stride)  # noqa: E731
        fn()
    out = fn()
    ref = ops.patch_brightness_rank(x, patch, stride, K, backend="cpu")
    # same selection as the fused op (random scores: no ties to break differently)
    assert torch.equal(out[0], ref.bright_index) and torch.equal(out[3], ref.dark_index)
    benchmark(fn)


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_gather(benchmark, provider):
    benchmark.group = "gather-8x3x512x512-k4-p32-fwd+bwd"
    x = _image().requires_grad_()
    r = ops.patch_brightness_rank(x, PATCH, PATCH, K, backend="cpu")
    corners = torch.cat([r.bright_corner, r.dark_corner], 1)
    go = _image((SHAPE[0], corners.shape[1], SHAPE[1], PATCH, PATCH))  # the upstream gradient

    if provider == "fused":
        def fn():
            return torch.autograd.grad(ops.gather_patches(x, corners, PATCH, backend="cpu"), x, go)[0]
    elif provider == "eager":
        def fn():
            return torch.autograd.grad(eager_gather(x, corners), x, go)[0]
    else:
        c = compiled(lambda x, corners: ops.gather_patches(x, corners, PATCH, backend="reference"))

        def fn():
            return torch.autograd.grad(c(x, corners), x, go)[0]
    fn()  # warm-up, every provider (see the module docstring)
    benchmark(fn)


# ---- GPU cases (benchmarks/gpu_check.py) -------------------------------------------------------

def gpu_cases(device, small):
    shape = (2, 3, 128, 128) if small else SHAPE
    patch = 16 if small else PATCH
    x = _image(shape, device)
    cases = []
    nat = "cuda" if device == "cuda" else "cpu"  # gpu_check --cpu: the C++ CPU kernel stands in for "cuda"
    for stride in (patch, patch // 2):
        comp = compiled(eager_rank)
        provs = {
            "eager": lambda s=stride: eager_rank(x, patch, s),
            "compile": lambda s=stride, c=comp: c(x, patch, s),
            "cuda": lambda s=stride: ops.patch_brightness_rank(x, patch, s, K, backend=nat),
            "triton": lambda s=stride: ops.patch_brightness_rank(x, patch, s, K, backend="triton"),
        }
        cases.append(Case(f"patch_rank f32 {list(shape)} p{patch} s{stride}", tensor_bytes(x), provs))
    xg = x.clone().requires_grad_()
    r = ops.patch_brightness_rank(x, patch, patch, K, backend=nat)
    corners = torch.cat([r.bright_corner, r.dark_corner], 1)
    go = _image((shape[0], corners.shape[1], shape[1], patch, patch), device)  # upstream gradient, as on the CPU

    def fused(b):
        return torch.autograd.grad(ops.gather_patches(xg, corners, patch, backend=b), xg, go)[0]

    def eager():
        return torch.autograd.grad(eager_gather(xg, corners, patch), xg, go)[0]

    cg = compiled(lambda x, c: ops.gather_patches(x, c, patch, backend="reference"))
    gbytes = 2 * tensor_bytes(x) + 2 * corners.shape[0] * corners.shape[1] * shape[1] * patch * patch * 4
    cases.append(Case(f"gather fwd+bwd f32 {list(shape)} k{corners.shape[1]} p{patch}", gbytes,
                      {"eager": eager, "compile": lambda: torch.autograd.grad(cg(xg, corners), xg, go)[0],
                       "cuda": lambda: fused(nat), "triton": lambda: fused("triton")}))
    return cases
