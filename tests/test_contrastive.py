"""contrastive_distance / contrastive_loss (SPEC section 4) in every backend vs the float64 reference."""
import os
import subprocess
import sys

import pytest
import torch

import fastdehaze.ops as F
from fastdehaze.ops import contrastive as C
from fastdehaze.reference import contrastive as R

LW = C.AECR_LAYER_WEIGHTS


def _feats(shapes, K, dtype=torch.float64, device="cpu", seed=0, neg_form="tensor"):
    g = torch.Generator().manual_seed(seed)
    A = [torch.rand(s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_() for s in shapes]
    P = [torch.rand(s, generator=g, dtype=torch.float64).to(device, dtype) for s in shapes]
    N = [torch.rand((K,) + tuple(s), generator=g, dtype=torch.float64).to(device, dtype) for s in shapes]
    if neg_form == "list":  # separate tensors (the Triton path copies them into one block)
        N = [[n[k].clone() for k in range(K)] for n in N]
    return A, P, N


def _check(backend, device, A, P, N, lw, w=None, ablation=False, rtol=1e-10, atol=1e-12, gtol=None):
    out = F.contrastive_loss(A, P, N, lw, w, ablation=ablation, backend=backend)
    ref = R.contrastive_loss(A, P, N, lw, w, ablation=ablation)
    assert out.dtype == (torch.float64 if A[0].dtype == torch.float64 else torch.float32)
    assert out.shape == ()
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=rtol, atol=atol, equal_nan=True)
    g = torch.autograd.grad(out, A)
    gr = torch.autograd.grad(ref, A)
    rt, at = gtol or (rtol, atol)
    for x, y, a in zip(g, gr, A):
        assert x.shape == a.shape and x.dtype == a.dtype
        torch.testing.assert_close(x, y, rtol=rt, atol=at, equal_nan=True)
    return out, g


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("neg_form", ["tensor", "list"])
@pytest.mark.parametrize("ablation", [False, True])
def test_loss_matches_reference_float64(backend_device, K, neg_form, ablation):
    b, dev = backend_device
    shapes = [(2, 3, 5, 7), (1, 4, 3, 3), (2, 2, 1, 17)]
    A, P, N = _feats(shapes, K, device=dev, neg_form=neg_form)
    w = None if K == 1 else (0.2, 0.3, 0.5)
    _check(b, dev, A, P, N, (0.5, 1.0, 2.0), w, ablation)


def test_default_negative_weights_sum_to_one(backend_device):
    b, dev = backend_device
    A, P, N = _feats([(1, 2, 4, 4)], 4, device=dev)
    out = F.contrastive_distance(A[0], P[0], N[0], backend=b)
    d = [torch.mean(torch.abs(A[0] - n)) for n in N[0]]
    exp = torch.mean(torch.abs(A[0] - P[0])) / (sum(d) / 4 + 1e-7)
    torch.testing.assert_close(out, exp, rtol=1e-12, atol=0)


@pytest.mark.parametrize("width", [1, 3, 17, 257])
def test_distance_widths(backend_device, width):
    b, dev = backend_device
    shape = (1, 2, 3, width) if width != 257 else (1, 1, width, width)
    A, P, N = _feats([shape], 2, device=dev, seed=width)
    out = F.contrastive_distance(A[0], P[0], N[0], (0.25, 0.75), backend=b)
    ref = R.contrastive_distance(A[0], P[0], N[0], (0.25, 0.75))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(torch.autograd.grad(out, A[0])[0], torch.autograd.grad(ref, A[0])[0],
                               rtol=1e-10, atol=1e-15)


def test_gradcheck(backend_device):
    b, dev = backend_device
    A, P, N = _feats([(1, 2, 3, 3), (1, 1, 2, 5)], 2, device=dev)
    fn = lambda a0, a1: F.contrastive_loss([a0, a1], P, N, (0.5, 1.0), (0.4, 0.6), backend=b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(A), eps=1e-6, atol=1e-7)
    fd = lambda a: F.contrastive_distance(a, P[0], N[0], ablation=False, backend=b)  # noqa: E731
    assert torch.autograd.gradcheck(fd, (A[0],), eps=1e-6, atol=1e-7)


def test_opcheck(backend_device):
    b, dev = backend_device
    A, P, N = _feats([(1, 2, 3, 3), (1, 1, 2, 5)], 2, device=dev)
    w = torch.tensor([0.4, 0.6], dtype=torch.float64, device=dev)
    lw = torch.tensor([0.5, 1.0], dtype=torch.float64, device=dev)
    flat = [n for layer in N for n in layer.unbind(0)]
    key = "triton" if b == "triton" else "native"
    for abl in (False, True):
        torch.library.opcheck(C._loss.ops()[key], (A, P, flat, lw, w, 1e-7, abl))
        torch.library.opcheck(C._distance.ops()[key], (A[0], P[0], list(N[0].unbind(0)), w, 1e-7, abl))
    a32 = A[0].detach().float().requires_grad_()
    torch.library.opcheck(C._distance.ops()[key], (a32, P[0].float(), [N[0][0].float()],
                                                   torch.ones(1, device=dev), 1e-7, False))


def test_compile_fullgraph(backend_device):
    b, dev = backend_device
    A, P, N = _feats([(1, 2, 4, 4), (1, 3, 2, 2)], 2, device=dev)

    def fn(a0, a1):
        return F.contrastive_loss([a0, a1], P, N, (0.5, 1.0), (0.3, 0.7), backend=b) * 2

    cf = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = cf(*A)
    ref = fn(*A)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, A), torch.autograd.grad(ref, A))


def test_anchor_equals_negative_gives_dap_over_eps(backend_device):
    """Issue 4: a == n exactly, p != a: the finite fp32 value sum(lambda * d_ap) / 1e-7."""
    b, dev = backend_device
    shapes = [(1, 2, 4, 4), (1, 2, 2, 2), (1, 3, 2, 1), (1, 1, 1, 3), (1, 2, 1, 1)]
    A, P, _ = _feats(shapes, 1, dtype=torch.float32, device=dev)
    N = [a.detach().clone()[None] for a in A]
    out = F.contrastive_loss(A, P, N, backend=b)
    exp = sum(lam * (a.double() - p.double()).abs().mean() for lam, a, p in zip(LW, A, P)) / 1e-7
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out.double(), exp.detach(), rtol=1e-5, atol=0)
    g = torch.autograd.grad(out, A)
    assert all(torch.isfinite(x).all() for x in g)


def test_all_equal_gives_zero_and_finite_grads(backend_device):
    b, dev = backend_device
    A, _, _ = _feats([(1, 2, 3, 3), (2, 1, 2, 2)], 1, dtype=torch.float32, device=dev)
    P = [a.detach().clone() for a in A]
    N = [a.detach().clone()[None] for a in A]
    out = F.contrastive_loss(A, P, N, (1.0, 0.5), backend=b)
    assert out.item() == 0.0
    for x in torch.autograd.grad(out, A):
        assert torch.isfinite(x).all() and (x == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_accumulates_in_float32(backend_device, dtype):
    b, dev = backend_device
    A, P, N = _feats([(2, 3, 5, 7), (1, 2, 17, 3)], 2, dtype=dtype, device=dev)
    out = F.contrastive_loss(A, P, N, (0.5, 1.0), (0.5, 0.5), backend=b)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    Ad = [a.detach().double().requires_grad_() for a in A]
    ref = R.contrastive_loss(Ad, [p.double() for p in P], [n.double() for n in N], (0.5, 1.0), (0.5, 0.5))
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    g = torch.autograd.grad(out, A)
    gr = torch.autograd.grad(ref, Ad)
    for x, y in zip(g, gr):
        assert x.dtype == dtype
        torch.testing.assert_close(x.double(), y, rtol=2e-2, atol=1e-3 * y.abs().max().item())
    # a == n: a ratio near 1e7 that fp16 cannot hold stays finite in the float32 result
    out = F.contrastive_distance(A[0], P[0], [A[0].detach()], backend=b)
    assert torch.isfinite(out) and out.item() > 1e5


def test_float32_sum_is_blocked(backend_device):
    """A long float32 sum must stay near the float64 value (a sequential float32 sum drifts)."""
    b, dev = backend_device
    g = torch.Generator().manual_seed(3)
    n = 1 << 21
    a = (torch.rand(n, generator=g, dtype=torch.float64) + 1.0)
    p = torch.zeros(n, dtype=torch.float64)
    neg = (a + torch.rand(n, generator=g, dtype=torch.float64) + 0.5)[None]
    ref = R.contrastive_distance(a, p, neg)
    out = F.contrastive_distance(a.float().to(dev), p.float().to(dev), neg.float().to(dev), backend=b)
    exp = R.contrastive_distance(a.float().double(), p, neg.float().double())
    torch.testing.assert_close(out.double(), exp, rtol=2e-6, atol=0)
    assert abs(out.item() - ref.item()) / ref.item() < 2e-6


@pytest.mark.parametrize("layout", ["nhwc_permuted", "slice", "channels_last", "mixed"])
def test_non_contiguous(backend_device, layout):
    b, dev = backend_device
    g = torch.Generator().manual_seed(5)

    def mk(shape):
        B, Cc, H, W = shape
        if layout == "nhwc_permuted":
            return torch.rand(B, H, W, Cc, generator=g, dtype=torch.float64).permute(0, 3, 1, 2)
        if layout == "slice":
            return torch.rand(B, Cc, H, 2 * W + 1, generator=g, dtype=torch.float64)[..., 1::2]
        x = torch.rand(shape, generator=g, dtype=torch.float64)
        return x.contiguous(memory_format=torch.channels_last) if layout != "mixed" else x

    shapes = [(2, 3, 4, 5), (1, 5, 3, 3)]
    A = [mk(s).to(dev).requires_grad_() for s in shapes]
    P = [mk(s).to(dev) for s in shapes]
    N = [[mk(s).to(dev), mk(s).to(dev)] for s in shapes]
    if layout == "mixed":
        A = [A[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_(), A[1]]
        P = [P[0], P[1].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)]
        N = [[N[0][0][:, :, :, :], N[0][1].contiguous(memory_format=torch.channels_last)], N[1]]
    _check(b, dev, A, P, N, (1.0, 0.5), (0.6, 0.4))


def test_batch_zero(backend_device):
    b, dev = backend_device
    A, P, N = _feats([(0, 3, 4, 4), (0, 2, 2, 2)], 2, device=dev)
    out = F.contrastive_loss(A, P, N, (1.0, 1.0), backend=b)
    ref = R.contrastive_loss(A, P, N, (1.0, 1.0))
    assert torch.isnan(out) and torch.isnan(ref)  # mean over no elements, as nn.L1Loss
    g = torch.autograd.grad(out, A)
    assert [x.shape for x in g] == [a.shape for a in A]


def test_nan_propagates(backend_device):
    b, dev = backend_device
    A, P, N = _feats([(1, 2, 3, 3)], 2, device=dev)
    P[0] = P[0].clone()
    P[0][0, 1, 1, 1] = float("nan")
    out, g = _check(b, dev, A, P, N, (1.0,), (0.5, 0.5))
    assert torch.isnan(out) and torch.isnan(g[0]).all()
    # ablation: the gradient stays finite (sign(NaN) = 0, as torch's abs backward)
    A2, P2, N2 = _feats([(1, 2, 3, 3)], 1, device=dev)
    A2[0] = A2[0].detach().clone()
    A2[0][0, 0, 0, 0] = float("nan")
    A2[0].requires_grad_()
    out, g = _check(b, dev, A2, P2, N2, (1.0,), ablation=True)
    assert torch.isnan(out) and torch.isfinite(g[0]).all() and g[0][0, 0, 0, 0] == 0


def test_bad_input():
    a = torch.rand(1, 2, 3, 3)
    p = torch.rand(1, 2, 3, 3)
    n = torch.rand(2, 1, 2, 3, 3)
    with pytest.raises(ValueError, match="negatives"):
        F.contrastive_distance(a, p, [])
    with pytest.raises(ValueError, match="negatives"):
        F.contrastive_distance(a, p, torch.rand(0, 1, 2, 3, 3))
    with pytest.raises(ValueError, match="negatives"):
        F.contrastive_loss([a], [p], [[]])
    with pytest.raises(ValueError, match="positive"):
        F.contrastive_distance(a, torch.rand(1, 2, 3, 4), n)
    with pytest.raises(ValueError, match=r"negatives\[1\]"):
        F.contrastive_distance(a, p, [a, torch.rand(1, 2, 4, 3)])
    with pytest.raises(ValueError, match="negatives"):
        F.contrastive_distance(a, p, torch.rand(2, 1, 2, 3, 4))
    # mixed floating dtypes are promoted (bug-case row 34), not rejected: float32 anchor + float64 positive
    mixed = F.contrastive_distance(a, p.double(), n)
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, F.contrastive_distance(a.double(), p.double(), n.double(), backend="reference"))
    with pytest.raises(TypeError, match="anchor"):
        F.contrastive_distance(a.to(torch.int32), p, n)
    with pytest.raises(TypeError, match="negatives"):
        F.contrastive_distance(a, p, "hazy")
    with pytest.raises(ValueError, match="negative_weights"):
        F.contrastive_distance(a, p, n, (1.0,))
    with pytest.raises(ValueError, match="negative_weights"):
        F.contrastive_distance(a, p, n, (1.0, -0.5))
    with pytest.raises(ValueError, match="eps"):
        F.contrastive_distance(a, p, n, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        F.contrastive_distance(a, p, n, eps=float("nan"))
    for bad in ((float("nan"), 0.5), (float("inf"), 0.5), torch.tensor([0.5, float("nan")])):
        with pytest.raises(ValueError, match="negative_weights must be finite"):
            F.contrastive_distance(a, p, n, bad)
    with pytest.raises(ValueError, match="layer_weights must be finite"):
        F.contrastive_loss([a], [p], [n], (float("nan"),))
    numpy = pytest.importorskip("numpy")
    assert torch.isfinite(F.contrastive_distance(a, p, n, eps=numpy.float32(1e-7)))  # any real eps
    with pytest.raises(TypeError, match="ablation"):
        F.contrastive_distance(a, p, n, ablation=1)
    with pytest.raises(ValueError, match="layer_weights"):
        F.contrastive_loss([a, a], [p, p], [n, n])  # default weights are for 5 layers
    with pytest.raises(ValueError, match="positives"):
        F.contrastive_loss([a, a], [p], [n, n], (1.0, 1.0))
    with pytest.raises(ValueError, match=r"positives\[1\]"):
        F.contrastive_loss([a, a], [p, torch.rand(1, 2, 2, 2)], [n, n], (1.0, 1.0))
    with pytest.raises(ValueError, match=r"negatives\[1\]"):
        F.contrastive_loss([a, a], [p, p], [n, n[:1]], (1.0, 1.0))
    with pytest.raises(TypeError, match=r"anchors\[1\]"):
        F.contrastive_loss([a, a.double()], [p, p.double()], [n, n.double()], (1.0, 1.0))
    with pytest.raises(TypeError, match="anchors"):
        F.contrastive_loss(a, [p], [n], (1.0,))
    with pytest.raises(ValueError, match="backend"):
        F.contrastive_distance(a, p, n, backend="gpu")
    with pytest.raises(RuntimeError, match="cuda"):
        F.contrastive_distance(a, p, n, backend="cuda")
    # ablation needs no negatives
    assert torch.isfinite(F.contrastive_distance(a, p, None, ablation=True))


def test_positives_and_negatives_get_no_gradient(backend_device):
    b, dev = backend_device
    A, P, N = _feats([(1, 2, 3, 3)], 1, device=dev)
    P = [p.requires_grad_() for p in P]
    N = [n.requires_grad_() for n in N]
    out = F.contrastive_loss(A, P, N, (1.0,), backend=b)
    out.backward()
    assert A[0].grad is not None and P[0].grad is None and N[0].grad is None


@pytest.mark.parametrize("K", [9, 17])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_negatives_and_block_edges(K, dtype):
    """More negatives than one sweep of the C++ kernel holds (8) and lengths around its
    65536-element task and 4096-element pieces, against the float64 reference (the multi-sweep
    path of csrc/cpu/contrastive.cpp)."""
    shapes = [(1, 1, 1, 65537), (1, 2, 2, 1024), (1, 1, 1, 4097), (1, 1, 1, 15)]
    A, P, N = _feats(shapes, K, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    w = torch.rand(K, generator=g, dtype=torch.float64)
    w = tuple((w / w.sum()).tolist())
    tol = (1e-10, 1e-12) if dtype == torch.float64 else (1e-5, 1e-7)
    _check("cpu", "cpu", A, P, N, (0.5, 1.0, 2.0, 0.25), w, rtol=tol[0], atol=tol[1])


# ---- the C++ CPU packed-signs path (contrastive_loss_signs) ------------------------------------

def _plain_and_signs_grads(A, P, N, lw, w, ablation=False):
    """Loss, dists and anchor grads of the C++ op that re-reads the features in its backward and of
    contrastive_loss_signs (what the public function runs on CPU tensors that need a gradient)."""
    cdt = C.compute_dtype(A[0].dtype)
    lw = torch.tensor(lw, dtype=cdt)
    w = torch.tensor(w, dtype=cdt)
    flat = [n for layer in N for n in layer]
    out = []
    for op in (C._loss, C._loss_signs):
        res = op("cpu", A, P, flat, lw, w, 1e-7, ablation)
        out.append((res[0], res[1], torch.autograd.grad(res[0] * 0.7, A)))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [1, 3, 9])
def test_signs_backward_equals_rereading_backward(dtype, K):
    """Gradients from the packed signs are bitwise those of the backward that re-reads a, p, n_k,
    for lengths 1, 3, 17, 257, around the 16-element sign entries, the 65536-element tasks and
    their sub-runs, with zero differences, NaN and several layers; and both match the reference."""
    shapes = [(1,), (3,), (17,), (257,), (2, 3, 5, 7), (65536 + 8,), (2 * 65536 + 77,), (4 * 16 * 5 + 9,)]
    A, P, N = _feats(shapes, K, dtype=dtype, seed=K)
    with torch.no_grad():
        A[4][0, 0, 0, :3] = P[4][0, 0, 0, :3]  # a == p: sign 0
        A[4][1, 1, 1, :2] = N[4][0][1, 1, 1, :2]  # a == n_0: sign 0
        A[3][7] = float("nan")
    g = torch.Generator().manual_seed(2)
    lw = tuple(torch.rand(len(shapes), generator=g).tolist())
    w = tuple(torch.rand(K, generator=g).tolist())
    for ablation in (False, True):
        (l0, d0, g0), (l1, d1, g1) = _plain_and_signs_grads(A, P, N, lw, w, ablation)
        torch.testing.assert_close(l0, l1, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(d0, d1, rtol=0, atol=0, equal_nan=True)
        for x, y in zip(g0, g1):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
        if ablation:  # lambda sign(a - p) / N: sign(NaN) = 0, as torch.sign
            assert g1[3][7] == 0 and torch.isfinite(g1[3]).all()
        else:  # a NaN layer: NaN coefficients, NaN * 0 included (as autograd)
            assert torch.isnan(g1[3]).all()
        if dtype == torch.float64:
            Ad = [a.detach().requires_grad_() for a in A]
            ref = R.contrastive_loss(Ad, P, N, lw, w, ablation=ablation) * 0.7
            gr = torch.autograd.grad(ref, Ad)
            for x, y in zip(g1, gr):
                torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("layout", ["channels_last", "slice", "nhwc_permuted", "expanded"])
def test_signs_layouts(layout):
    """The packed signs follow the memory order the forward reads the anchor in, which must be the
    gradient's (at::empty_like(anchor)) for non-dense and channels_last anchors."""
    g = torch.Generator().manual_seed(11)
    B, Cc, H, W = 2, 5, 9, 13
    base = torch.rand(B, Cc, H, W, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        a = base.contiguous(memory_format=torch.channels_last)
    elif layout == "slice":
        a = torch.rand(B, Cc, H, 2 * W, generator=g, dtype=torch.float64)[..., ::2]
    elif layout == "nhwc_permuted":
        a = torch.rand(B, Cc, W, H, generator=g, dtype=torch.float64).transpose(2, 3)
    else:
        a = torch.rand(1, Cc, H, W, generator=g, dtype=torch.float64).expand(B, Cc, H, W)
    a = a.requires_grad_()
    p = torch.rand(B, Cc, H, W, generator=g, dtype=torch.float64)
    n = [torch.rand(B, Cc, H, W, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)]
    (_, _, g0), (_, _, g1) = _plain_and_signs_grads([a], [p], [n], (1.0,), (1.0,))
    torch.testing.assert_close(g0[0], g1[0], rtol=0, atol=0)
    ad = a.detach().requires_grad_()
    gr = torch.autograd.grad(R.contrastive_loss([ad], [p], [n], (1.0,)) * 0.7, ad)[0]
    torch.testing.assert_close(g1[0], gr, rtol=1e-10, atol=1e-14)


def test_signs_path_is_taken_and_frees_positives_and_negatives():
    """On CPU with an anchor needing grad, the public function runs contrastive_loss_signs, which
    does not keep the positives' and negatives' features alive for the backward (the plain op
    does); without grad it runs the plain op and returns no signs."""
    import weakref

    A, P, N = _feats([(1, 2, 8, 8), (1, 3, 4, 4)], 2)
    P2, N2 = [p.clone() for p in P], [n.clone() for n in N]
    refs = [weakref.ref(t) for t in P2 + N2]
    out = F.contrastive_loss(A, P2, N2, (0.5, 1.0), backend="cpu")
    assert out.grad_fn is not None and "contrastive_loss_signs" in out.grad_fn.name()
    del P2, N2
    assert all(r() is None for r in refs), "positives/negatives kept alive by the signs path"
    g = torch.autograd.grad(out, A)
    gr = torch.autograd.grad(R.contrastive_loss(A, P, N, (0.5, 1.0)), A)
    for x, y in zip(g, gr):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-14)
    # the plain op keeps them (its backward re-reads them)
    P3 = [p.clone() for p in P]
    keep = weakref.ref(P3[0])
    flat = [n for layer in N for n in layer]
    lw, w = torch.tensor([0.5, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    out3 = C._loss("cpu", A, P3, flat, lw, w, 1e-7, False)[0]
    del P3
    assert keep() is not None and out3.grad_fn is not None
    with torch.no_grad():
        assert F.contrastive_loss(A, P, N, (0.5, 1.0), backend="cpu").grad_fn is None
    # contrastive_distance takes the same path
    d = F.contrastive_distance(A[0], P[0], N[0], backend="cpu")
    assert "contrastive_loss_signs" in d.grad_fn.name()
    torch.testing.assert_close(torch.autograd.grad(d, A[0])[0],
                               torch.autograd.grad(R.contrastive_distance(A[0], P[0], N[0]), A[0])[0],
                               rtol=1e-10, atol=1e-14)


def test_signs_opcheck():
    A, P, N = _feats([(1, 2, 3, 3), (1, 1, 2, 17)], 2)
    flat = [n for layer in N for n in layer.unbind(0)]
    w = torch.tensor([0.4, 0.6], dtype=torch.float64)
    lw = torch.tensor([0.5, 1.0], dtype=torch.float64)
    op = C._loss_signs.ops()["native"]
    assert "triton" not in C._loss_signs.ops()
    for abl in (False, True):
        torch.library.opcheck(op, (A, P, flat, lw, w, 1e-7, abl))
    a32 = [a.detach().float().requires_grad_() for a in A]
    torch.library.opcheck(op, (a32, [p.float() for p in P], [n.float() for n in flat], lw.float(), w.float(),
                               1e-7, False))


def test_signs_backward_rejects_wrong_signs():
    A, P, N = _feats([(1, 2, 3, 3)], 1)
    lw, w = torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    loss, dists, signs = torch.ops.fastdehaze.contrastive_loss_signs(A, P, [N[0][0]], lw, w, 1e-7, False)
    g = torch.ones((), dtype=torch.float64)
    bwd = torch.ops.fastdehaze.contrastive_loss_signs_backward
    with pytest.raises(RuntimeError, match="signs must be"):
        bwd(g, A, lw, w, dists, signs[:-1], 1e-7, False)
    with pytest.raises(RuntimeError, match="signs must be"):
        bwd(g, A, lw, w, dists, signs.float(), 1e-7, False)
    with pytest.raises(RuntimeError, match="dists must be"):
        bwd(g, A, lw, w, torch.cat([dists, dists]), signs, 1e-7, False)
    with pytest.raises(RuntimeError, match="Triton"):
        C._loss_signs("triton", A, P, [N[0][0]], lw, w, 1e-7, False)


def test_large_outputs_are_reused_from_the_cache():
    """Gradients of 4 MiB or more come from the output cache: the next step reuses the freed block
    (no fresh memory), values stay right, strides are those of empty_like (channels_last here),
    and release_cpu_cache frees what is held."""
    g = torch.Generator().manual_seed(4)
    a = torch.rand(2, 16, 192, 192, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    p = torch.rand(2, 16, 192, 192, generator=g)
    n = torch.rand(1, 2, 16, 192, 192, generator=g)
    assert a.numel() * 4 >= 4 << 20
    C.release_cpu_cache()
    ptrs = []
    for _ in range(2):
        ga = torch.autograd.grad(F.contrastive_loss([a], [p], [n], (1.0,), backend="cpu"), a)[0]
        assert ga.stride() == torch.empty_like(a).stride()
        ptrs.append(ga.data_ptr())
        del ga
    assert ptrs[0] == ptrs[1]
    ga = torch.autograd.grad(F.contrastive_loss([a], [p], [n], (1.0,), backend="cpu"), a)[0]
    ad = a.detach().double().requires_grad_()
    gr = torch.autograd.grad(R.contrastive_loss([ad], [p.double()], [n.double()], (1.0,)), ad)[0]
    torch.testing.assert_close(ga.double(), gr, rtol=1e-5, atol=1e-12)
    ga.resize_(3, 16, 192, 192)  # resizable like any tensor (the block goes back to the cache)
    del ga
    assert C.release_cpu_cache() >= a.numel() * 4
    assert C.release_cpu_cache() == 0


def _steps_then_release(channels, cache_mb):
    """In a fresh process with FASTDEHAZE_CPU_CACHE_MB=cache_mb: one fwd+bwd step per entry of
    channels (an anchor of [1, c, 512, 512] float32: a c MiB gradient), then
    release_cpu_cache(); returns (MiB released, stderr)."""
    code = ("import torch, fastdehaze.ops as F\n"
            "from fastdehaze.ops import contrastive as C\n"
            f"for c in {tuple(channels)!r}:\n"
            "    a = torch.rand(1, c, 512, 512, requires_grad=True)\n"
            "    p, n = torch.rand(1, c, 512, 512), torch.rand(1, 1, c, 512, 512)\n"
            "    torch.autograd.grad(F.contrastive_loss([a], [p], [n], (1.0,), backend='cpu'), a)\n"
            "print(C.release_cpu_cache() >> 20)\n")
    env = {**os.environ, "FASTDEHAZE_CPU_CACHE_MB": str(cache_mb)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1]), out.stderr


def test_cache_can_be_disabled():
    assert _steps_then_release([8], 0)[0] == 0
    assert _steps_then_release([8], 512)[0] == 8


def test_cache_keeps_the_latest_sizes_within_its_limit():
    """Gradients of 8, 12 and 16 MiB in turn under a 20 MiB limit: the oldest blocks are evicted,
    so the cache ends holding the 16 MiB block only; a bad limit warns and uses the default."""
    assert _steps_then_release([8, 12, 16], 20)[0] == 16
    released, err = _steps_then_release([8, 12, 16], "lots")
    assert released == 36 and "FASTDEHAZE_CPU_CACHE_MB=lots" in err
