"""contrastive_distance / contrastive_loss (SPEC section 4) in every backend vs the float64 reference."""
import math

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
    with pytest.raises(TypeError, match="positive"):
        F.contrastive_distance(a, p.double(), n)
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
    """More negatives than one sweep of the C++ kernel holds (8) and lengths around its 4096-element
    block, against the float64 reference (the multi-sweep path of csrc/cpu/contrastive.cpp)."""
    shapes = [(1, 1, 1, 4097), (1, 2, 2, 1024), (1, 1, 1, 15)]
    A, P, N = _feats(shapes, K, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    w = torch.rand(K, generator=g, dtype=torch.float64)
    w = tuple((w / w.sum()).tolist())
    tol = (1e-10, 1e-12) if dtype == torch.float64 else (1e-5, 1e-7)
    _check("cpu", "cpu", A, P, N, (0.5, 1.0, 2.0), w, rtol=tol[0], atol=tol[1])
