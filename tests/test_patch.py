"""Tests of the IICL patch ops (SPEC section 3): patch_brightness_rank and gather_patches in every
backend, against the float64 reference of fastdehaze/reference/patch.py (which is itself checked
against a brute-force definition written with loops and Python's sorted()).

Inputs stay tiny for the Triton backend: it runs under the CPU interpreter here.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastdehaze.ops as F
from fastdehaze.ops import patch as ops_patch
from fastdehaze.reference import patch as R

F64 = torch.float64
FIELDS = R.PatchRank._fields


def _img(shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=g, dtype=F64).to(dtype)


def assert_rank_equal(got, ref, atol=1e-12):
    """Indices and corners identical, scores equal to ``atol`` (NaN where NaN), dtypes equal."""
    assert isinstance(got, R.PatchRank)
    for name in FIELDS:
        g, r = getattr(got, name), getattr(ref, name)
        assert g.dtype == r.dtype, name
        assert g.shape == r.shape, name
        if r.dtype == torch.int64:
            assert torch.equal(g, r), f"{name}: {g.tolist()} != {r.tolist()}"
        else:
            torch.testing.assert_close(g, r, atol=atol, rtol=0, equal_nan=True, msg=name)


def brute_force_rank(x, patch, stride, k, measure):
    """The SPEC's words as loops: patch means, then Python's (stable) sorted() with NaN largest."""
    x = x.to(F64)
    B, C, H, W = x.shape
    if measure == "luma" and C == 3:
        m = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    elif measure in ("luma", "mean"):
        m = x.mean(1)
    elif measure == "dark":
        m = x.amin(1)
    else:
        m = x.amax(1)
    nH, nW = (H - patch) // stride + 1, (W - patch) // stride + 1
    out = []
    for b in range(B):
        sc = [m[b, i * stride:i * stride + patch, j * stride:j * stride + patch].mean().item()
              for i in range(nH) for j in range(nW)]
        bright = sorted(range(len(sc)), key=lambda e: (0 if math.isnan(sc[e]) else 1, -sc[e] if not math.isnan(sc[e]) else 0))
        dark = sorted(range(len(sc)), key=lambda e: (1 if math.isnan(sc[e]) else 0, sc[e] if not math.isnan(sc[e]) else 0))
        out.append((bright[:k], dark[:k], sc))
    return out


# ---- patch_brightness_rank: values ------------------------------------------------------------

# (shape, patch, stride, k, measure): default non-overlapping grid, stride > patch (gaps),
# stride < patch (overlapping: direct window sums in the C++ kernel while patch <= 4 stride,
# running sums beyond), every measure, 1 and 4 channels.
RANK_CASES = [
    ((2, 3, 24, 28), 8, None, 3, "luma"),
    ((2, 3, 21, 23), 5, 7, 4, "max"),
    ((1, 3, 19, 22), 6, 2, 10, "mean"),
    ((2, 3, 17, 18), 4, 1, 6, "dark"),
    ((2, 1, 16, 20), 4, 3, 5, "luma"),
    ((1, 4, 12, 13), 3, 2, 20, "mean"),
    ((1, 3, 23, 21), 9, 2, 12, "luma"),   # running sums
    ((2, 3, 17, 18), 5, 1, 6, "dark"),    # running sums
]


def test_reference_matches_brute_force():
    x = _img((2, 3, 19, 22), seed=3)
    for patch, stride, measure in [(6, 2, "luma"), (5, 5, "dark"), (4, 7, "max"), (3, 1, "mean")]:
        ref = R.patch_brightness_rank(x, patch, stride, 5, measure)
        for b, (bright, dark, sc) in enumerate(brute_force_rank(x, patch, stride, 5, measure)):
            assert ref.bright_index[b].tolist() == bright
            assert ref.dark_index[b].tolist() == dark
            torch.testing.assert_close(ref.bright_score[b], torch.tensor([sc[e] for e in bright], dtype=F64))


@pytest.mark.parametrize("case", RANK_CASES, ids=lambda c: f"{c[0]}-p{c[1]}-s{c[2]}-k{c[3]}-{c[4]}")
def test_rank_matches_reference_f64(backend_device, case):
    backend, device = backend_device
    shape, patch, stride, k, measure = case
    x = _img(shape, seed=1).to(device)
    ref = F.patch_brightness_rank(x.cpu(), patch, stride, k, measure, backend="reference")
    got = F.patch_brightness_rank(x, patch, stride, k, measure, backend=backend)
    assert_rank_equal(R.PatchRank(*(t.cpu() for t in got)), ref)
    nW = (shape[3] - patch) // (stride or patch) + 1
    s = stride or patch
    assert torch.equal(got.bright_corner.cpu(), torch.stack([ref.bright_index // nW * s, ref.bright_index % nW * s], -1))


def test_rank_float32_matches_reference(backend_device):
    backend, device = backend_device
    x = _img((2, 3, 20, 24), seed=2, dtype=torch.float32).to(device)
    ref = F.patch_brightness_rank(x.cpu(), 4, 4, 5, "luma", backend="reference")
    got = F.patch_brightness_rank(x, 4, 4, 5, "luma", backend=backend)
    assert got.bright_score.dtype == torch.float32
    assert_rank_equal(R.PatchRank(*(t.cpu() for t in got)), ref, atol=1e-6)


def test_rank_default_arguments_cpu():
    x = _img((2, 3, 96, 130), seed=4)
    got = F.patch_brightness_rank(x)  # patch 32, stride 32, k 4, luma, backend auto (C++)
    assert got.bright_index.shape == (2, 4)
    assert_rank_equal(got, R.patch_brightness_rank(x))


@pytest.mark.parametrize("shape", [(1, 3, 412, 548), (2, 3, 461, 619)])
@pytest.mark.parametrize("stride", [None, 13])
def test_rank_odd_image_sizes_cpu(shape, stride):
    x = _img(shape, seed=5)
    assert_rank_equal(F.patch_brightness_rank(x, 32, stride, 7, backend="cpu"),
                      R.patch_brightness_rank(x, 32, stride, 7))


def test_rank_odd_image_size_triton():
    backend = "triton"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = _img((1, 3, 461, 619), seed=6)
    r = F.patch_brightness_rank(x.to(dev), 64, None, 4, backend=backend)
    assert_rank_equal(type(r)(*(t.cpu() for t in r)), R.patch_brightness_rank(x, 64, None, 4))


@pytest.mark.parametrize("W", [1, 3, 17, 257])
def test_rank_widths(backend_device, W):
    backend, device = backend_device
    patch = 1 if W == 1 else 3
    x = _img((2, 3, 5, W), seed=W).to(device)
    k = min(4, ((5 - patch) // 1 + 1) * (W - patch + 1))
    ref = R.patch_brightness_rank(x.cpu(), patch, 1, k, "luma")
    got = F.patch_brightness_rank(x, patch, 1, k, "luma", backend=backend)
    assert_rank_equal(R.PatchRank(*(t.cpu() for t in got)), ref)


# ---- ties, NaN, inf ---------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [4, 2])
def test_rank_ties_keep_the_lower_index_first(backend_device, stride):
    backend, device = backend_device
    # dyadic values: every patch sum is exact, so equal patches tie exactly in every backend
    x = torch.full((1, 3, 16, 16), 0.5, dtype=F64)
    x[:, :, 8:12, 0:4] = 0.75  # one brighter patch
    x[:, :, 0:4, 12:16] = 0.25  # one darker patch
    x = x.to(device)
    nH = (16 - 4) // stride + 1
    n = nH * nH
    got = F.patch_brightness_rank(x, 4, stride, n, "mean", backend=backend)
    ref = R.patch_brightness_rank(x.cpu(), 4, stride, n, "mean")
    assert_rank_equal(R.PatchRank(*(t.cpu() for t in got)), ref)
    bi, di = got.bright_index[0].cpu(), got.dark_index[0].cpu()
    bright_patch, dark_patch = (8 // stride) * nH + 0, 0 * nH + 12 // stride
    assert bi[0] == bright_patch and di[0] == dark_patch
    # the tied patches with score exactly 0.5 come in increasing index order in both orders
    sb, sd = got.bright_score[0].cpu(), got.dark_score[0].cpu()
    ties_b, ties_d = bi[sb == 0.5], di[sd == 0.5]
    assert len(ties_b) > 1 and torch.all(ties_b[1:] > ties_b[:-1]) and torch.all(ties_d[1:] > ties_d[:-1])


def test_rank_ties_differ_from_unstable_topk():
    # Documented choice: stable order, not torch.topk's; all-equal scores give 0, 1, 2, ...
    x = torch.full((1, 3, 64, 64), 0.5, dtype=F64)
    got = F.patch_brightness_rank(x, 4, 4, 256, "luma", backend="cpu")
    assert torch.equal(got.bright_index[0], torch.arange(256))
    assert torch.equal(got.dark_index[0], torch.arange(256))


@pytest.mark.parametrize("stride", [4, 1])
def test_rank_nan_patch(backend_device, stride):
    backend, device = backend_device
    x = _img((2, 3, 12, 12), seed=7)
    x[0, 1, 5, 9] = float("nan")   # in patch (1, 2) for stride 4
    x[0, 0, 1, 1] = float("nan")   # in patch (0, 0)
    x[1, 2, 10, 10] = float("nan")
    x = x.to(device)
    n = ((12 - 4) // stride + 1) ** 2
    got = F.patch_brightness_rank(x, 4, stride, n, "luma", backend=backend)
    ref = R.patch_brightness_rank(x.cpu(), 4, stride, n, "luma")
    assert_rank_equal(R.PatchRank(*(t.cpu() for t in got)), ref)
    # NaN patches first (lower index first) in the bright order, last in the dark order
    nb = torch.isnan(got.bright_score[0].cpu())
    assert nb[: int(nb.sum())].all() and int(nb.sum()) >= 2
    assert torch.isnan(got.dark_score[0, -1].cpu())
    # as torch.topk ranks NaN: the NaN patches are topk's first picks too
    if stride == 4:
        scores = R.patch_scores(x.cpu(), 4, 4, "luma").reshape(2, -1)
        top = torch.topk(scores[0], 2).indices
        assert set(top.tolist()) == set(got.bright_index[0, :2].cpu().tolist())


@pytest.mark.parametrize("patch", [4, 6])  # stride 1: direct window sums (4), running sums (6)
def test_rank_inf_and_nan_with_overlapping_patches_cpu(patch):
    # stride < patch: NaN/inf must reach exactly the patches that hold them (running sums must
    # not let them leak into later patches)
    x = _img((1, 3, 14, 15), seed=8)
    x[0, :, 2, 3] = float("inf")
    x[0, 0, 9, 9] = float("-inf")
    x[0, 1, 12, 1] = float("nan")
    x[0, :, 5, 12] = float("inf")
    x[0, 2, 5, 13] = float("-inf")  # inf and -inf in one patch: NaN
    n = (14 - patch + 1) * (15 - patch + 1)
    assert_rank_equal(F.patch_brightness_rank(x, patch, 1, n, "luma", backend="cpu"),
                      R.patch_brightness_rank(x, patch, 1, n, "luma"))


def test_rank_dark_and_max_measures_propagate_nan_cpu():
    x = _img((1, 3, 8, 8), seed=9)
    x[0, 2, 0, 0] = float("nan")
    for measure in ("dark", "max"):
        got = F.patch_brightness_rank(x, 4, 4, 4, measure, backend="cpu")
        assert got.bright_index[0, 0] == 0 and torch.isnan(got.bright_score[0, 0])
        assert got.dark_index[0, -1] == 0


# ---- shapes: k = 0, batch 0, layouts, half -----------------------------------------------------

def test_rank_k0_and_batch0(backend_device):
    backend, device = backend_device
    x = _img((2, 3, 8, 8)).to(device)
    r = F.patch_brightness_rank(x, 4, k=0, backend=backend)
    assert [tuple(t.shape) for t in r] == [(2, 0), (2, 0), (2, 0, 2)] * 2
    assert r.bright_score.dtype == F64 and r.dark_index.dtype == torch.int64
    r = F.patch_brightness_rank(x[:0], 4, k=3, backend=backend)
    assert [tuple(t.shape) for t in r] == [(0, 3), (0, 3), (0, 3, 2)] * 2
    r = F.patch_brightness_rank(x[:0].half(), 4, k=3, backend=backend)
    assert r.bright_score.dtype == torch.float32


def test_rank_non_contiguous_and_channels_last(backend_device):
    backend, device = backend_device
    base = _img((2, 3, 20, 22), seed=10).to(device)
    ref = R.patch_brightness_rank(base.cpu(), 4, 3, 6, "luma")
    nhwc = base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # a permuted NHWC tensor
    cl = base.contiguous(memory_format=torch.channels_last)
    big = _img((2, 3, 25, 30), seed=11).to(device)
    big[:, :, 2:22, 5:27] = base
    sl = big[:, :, 2:22, 5:27]  # a slice
    assert not nhwc.is_contiguous() and not sl.is_contiguous()
    for x in (nhwc, cl, sl):
        got = F.patch_brightness_rank(x, 4, 3, 6, "luma", backend=backend)
        assert_rank_equal(R.PatchRank(*(t.cpu() for t in got)), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rank_half(backend_device, dtype):
    backend, device = backend_device
    x = _img((2, 3, 16, 20), seed=12, dtype=dtype).to(device)
    got = F.patch_brightness_rank(x, 4, 4, 5, "luma", backend=backend)
    ref = R.patch_brightness_rank(x.cpu(), 4, 4, 5, "luma")  # float32 scores of the half values
    assert got.bright_score.dtype == torch.float32
    full = R.patch_scores(x.cpu(), 4, 4, "luma").reshape(2, -1)
    for order in ("bright", "dark"):
        idx, sc = getattr(got, f"{order}_index").cpu(), getattr(got, f"{order}_score").cpu()
        # each returned score is the patch's score, in rank order, and the k-th score matches
        torch.testing.assert_close(sc, torch.gather(full, 1, idx), atol=1e-5, rtol=0)
        torch.testing.assert_close(sc, getattr(ref, f"{order}_score"), atol=1e-5, rtol=0)
        diffs = sc[:, 1:] - sc[:, :-1]
        assert bool((diffs <= 1e-6).all() if order == "bright" else (diffs >= -1e-6).all())


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,exc,match", [
    (dict(patch=9), ValueError, "patch"),
    (dict(patch=4, k=5), ValueError, "k "),
    (dict(patch=4, k=-1), ValueError, "k must be >= 0"),
    (dict(patch=4, measure="bright"), ValueError, "measure"),
    (dict(patch=4, measure=3), TypeError, "measure"),
    (dict(patch=0), ValueError, "patch must be >= 1"),
    (dict(patch=4, stride=0), ValueError, "stride"),
    (dict(patch=4.0), TypeError, "patch"),
    (dict(patch=4, k=2.0), TypeError, "k"),
    (dict(patch=4, stride=True), TypeError, "stride"),
])
def test_rank_bad_arguments(kw, exc, match):
    x = _img((1, 3, 8, 8))
    with pytest.raises(exc, match=match):
        F.patch_brightness_rank(x, **kw)


def test_rank_bad_images():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        F.patch_brightness_rank([[1.0]], 1)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        F.patch_brightness_rank(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="x must have 4 dims"):
        F.patch_brightness_rank(torch.zeros(3, 8, 8), 4)
    with pytest.raises(ValueError, match="measure='luma' needs"):
        F.patch_brightness_rank(torch.zeros(1, 2, 8, 8), 4)
    with pytest.raises(ValueError, match="patch"):
        F.patch_brightness_rank(torch.zeros(1, 3, 8, 3), 4)  # wider than the image is tall enough, not wide


def test_rank_scores_are_not_differentiable():
    x = _img((1, 3, 8, 8)).requires_grad_()
    r = F.patch_brightness_rank(x, 4, k=2, backend="cpu")
    assert not r.bright_score.requires_grad


# ---- gather_patches ---------------------------------------------------------------------------

def _corners(B, k, H, W, patch, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = torch.randint(0, H - patch + 1, (B, k, 1), generator=g)
    xs = torch.randint(0, W - patch + 1, (B, k, 1), generator=g)
    c = torch.cat([ys, xs], -1)
    c[:, -1] = c[:, 0]  # a repeated patch: its gradients add up
    return c


@pytest.mark.parametrize("shape,patch,k", [((2, 3, 13, 17), 5, 4), ((1, 2, 9, 9), 9, 2), ((2, 1, 3, 257), 3, 3),
                                           ((1, 3, 1, 1), 1, 2)])
def test_gather_values_and_gradients(backend_device, shape, patch, k):
    backend, device = backend_device
    B, C, H, W = shape
    x = _img(shape, seed=13).to(device).requires_grad_()
    corners = _corners(B, k, H, W, patch).to(device)
    xr = x.detach().cpu().requires_grad_()
    ref = F.gather_patches(xr, corners.cpu(), patch, backend="reference")
    got = F.gather_patches(x, corners, patch, backend=backend)
    assert got.shape == (B, k, C, patch, patch) and got.dtype == F64
    assert torch.equal(got.detach().cpu(), ref.detach())
    g = torch.randn(ref.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    (gr,) = torch.autograd.grad(ref, xr, g)
    (gg,) = torch.autograd.grad(got, x, g.to(device))
    torch.testing.assert_close(gg.cpu(), gr, atol=1e-12, rtol=0)


def test_gather_gradcheck(backend_device):
    backend, device = backend_device
    x = _img((1, 2, 5, 6), seed=14).to(device).requires_grad_()
    corners = torch.tensor([[[0, 0], [1, 2], [1, 2], [2, 3]]], device=device)  # overlapping and repeated
    assert torch.autograd.gradcheck(lambda t: F.gather_patches(t, corners, 3, backend=backend), (x,))


def test_gather_of_ranked_patches_has_their_score():
    x = _img((2, 3, 24, 28), seed=15)
    r = F.patch_brightness_rank(x, 8, 4, 3, "luma", backend="cpu")
    p = F.gather_patches(x, r.bright_corner, 8, backend="cpu")
    lum = 0.299 * p[:, :, 0] + 0.587 * p[:, :, 1] + 0.114 * p[:, :, 2]
    torch.testing.assert_close(lum.mean((-1, -2)), r.bright_score)


def test_gather_k0_batch0_half_and_layouts(backend_device):
    backend, device = backend_device
    x = _img((2, 3, 10, 12), seed=16).to(device)
    corners = _corners(2, 3, 10, 12, 4).to(device)
    assert F.gather_patches(x, corners[:, :0], 4, backend=backend).shape == (2, 0, 3, 4, 4)
    assert F.gather_patches(x[:0], corners[:0], 4, backend=backend).shape == (0, 3, 3, 4, 4)
    ref = R.gather_patches(x.cpu(), corners.cpu(), 4)
    nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    for xx in (nhwc, x.contiguous(memory_format=torch.channels_last), torch.cat([x, x], 3)[:, :, :, :12]):
        assert torch.equal(F.gather_patches(xx, corners, 4, backend=backend).cpu(), ref)
    for dt in (torch.float16, torch.bfloat16):
        xh = x.to(dt).requires_grad_()
        out = F.gather_patches(xh, corners, 4, backend=backend)
        assert out.dtype == dt and torch.equal(out.cpu(), ref.to(dt))
        (g,) = torch.autograd.grad(out, xh, torch.ones_like(out))
        # gradient of a sum = how many patches cover each pixel (small integers: exact in half)
        count = torch.zeros(2, 3, 10, 12, dtype=F64)
        for b in range(2):
            for q in range(3):
                y0, x0 = corners[b, q].tolist()
                count[b, :, y0:y0 + 4, x0:x0 + 4] += 1
        assert torch.equal(g.cpu().to(F64), count)


@pytest.mark.parametrize("dtype", [F64, torch.bfloat16])
def test_gather_above_the_threading_threshold_cpu(dtype):
    # The C++ gather runs in the calling thread below 4 MiB written and one task per thread above
    # it: here both the forward (320 patches of 48x48x3) and the backward (3 planes: on 2 threads
    # the second starts inside the image) are above it. Repeated and overlapping patches, a
    # channels_last input.
    B, C, H, W, p, k = 1, 3, 1000, 1100, 48, 320
    x = _img((B, C, H, W), seed=21, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    corners = _corners(B, k, H, W, p, seed=22)
    corners[:, 1] = (corners[:, 0] + 3).clamp(max=min(H, W) - p)  # overlaps patch 0
    out = F.gather_patches(x, corners, p, backend="cpu")
    assert torch.equal(out.detach(), R.gather_patches(x.detach(), corners, p))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    (gx,) = torch.autograd.grad(out, x, g)
    # the documented order: each pixel sums its patches in ascending patch index, in float (double for F64)
    acc_dtype = F64 if dtype == F64 else torch.float32
    want = torch.zeros(B, C, H, W, dtype=acc_dtype)
    for q in range(k):
        y0, x0 = corners[0, q].tolist()
        want[0, :, y0:y0 + p, x0:x0 + p] += g[0, q].to(acc_dtype)
    assert torch.equal(gx, want.to(dtype))
    assert torch.equal(torch.autograd.grad(F.gather_patches(x, corners, p, backend="cpu"), x, g)[0], gx)


@pytest.mark.parametrize("corners,patch,exc,match", [
    (torch.zeros(1, 2, 2), 3, TypeError, "corners must be an integer"),
    (torch.zeros(1, 2, 3, dtype=torch.int64), 3, ValueError, "corners must be"),
    (torch.zeros(2, 2, 2, dtype=torch.int64), 3, ValueError, "corners must be"),
    (torch.tensor([[[0, 6]]]), 3, ValueError, "corners out of range"),
    (torch.tensor([[[-1, 0]]]), 3, ValueError, "corners out of range"),
    (torch.zeros(1, 1, 2, dtype=torch.int64), 9, ValueError, "patch"),
    (torch.zeros(1, 1, 2, dtype=torch.int64), 0, ValueError, "patch"),
    (torch.zeros(1, 1, 2, dtype=torch.int64), 2.0, TypeError, "patch"),
    ([[[0, 0]]], 2, TypeError, "corners must be a torch.Tensor"),
])
def test_gather_bad_arguments(corners, patch, exc, match):
    x = _img((1, 3, 8, 8))
    with pytest.raises(exc, match=match):
        F.gather_patches(x, corners, patch)


def test_gather_accepts_int32_corners():
    x = _img((1, 3, 8, 8))
    c = torch.tensor([[[1, 2]]], dtype=torch.int32)
    assert torch.equal(F.gather_patches(x, c, 3, backend="cpu"), x[:, None, :, 1:4, 2:5])


# ---- registration: opcheck, torch.compile -----------------------------------------------------

def test_opcheck_rank(backend_device):
    backend, dev = backend_device
    x = _img((2, 3, 12, 13), seed=17).to(dev)
    for op in [ops_patch._rank.ops()["triton" if backend == "triton" else "native"]]:
        for args in [(x, 4, 3, 5, 0), (x.float(), 4, 4, 2, 2), (x[:0], 4, 4, 2, 1), (x.half(), 3, 2, 0, 3)]:
            torch.library.opcheck(op, args)


def test_opcheck_gather(backend_device):
    backend, dev = backend_device
    x = _img((2, 3, 9, 10), seed=18).to(dev)
    corners = _corners(2, 3, 9, 10, 4).to(dev)
    tri = backend == "triton"
    for op in [ops_patch._gather.ops()["triton" if tri else "native"]]:
        for xx in (x, x.clone().requires_grad_(), x.float().requires_grad_()):
            torch.library.opcheck(op, (xx, corners, 4))
        torch.library.opcheck(op, (x[:0], corners[:0], 4))
    for op in [ops_patch._gather.triton_backward if tri else ops_patch._gather.native_backward]:
        torch.library.opcheck(op, (torch.randn(2, 3, 3, 4, 4, dtype=F64).to(dev), corners, 9, 10))


def test_torch_compile_fullgraph(backend_device):
    backend, dev = backend_device
    torch._dynamo.reset()

    def step(I, J):
        r = F.patch_brightness_rank(I, 4, 4, 2, "luma", backend=backend)
        a = F.gather_patches(J, r.bright_corner, 4, backend=backend)
        b = F.gather_patches(J, r.dark_corner, 4, backend=backend)
        return (a - b).abs().mean(), r.dark_index

    I = _img((2, 3, 12, 16), seed=19).to(dev)
    J = _img((2, 3, 12, 16), seed=20).to(dev).requires_grad_()
    comp = torch.compile(step, fullgraph=True)
    loss_c, idx_c = comp(I, J)
    loss_e, idx_e = step(I, J)
    torch.testing.assert_close(loss_c, loss_e)
    assert torch.equal(idx_c, idx_e)
    (gc,) = torch.autograd.grad(loss_c, J)
    (ge,) = torch.autograd.grad(loss_e, J)
    torch.testing.assert_close(gc, ge)
