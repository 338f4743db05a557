"""Tests of box_filter and guided_filter (SPEC section 2) against the float64 reference."""
import pytest
import torch

import fastdehaze.ops as ops
from fastdehaze.ops import filters as F_ops
from fastdehaze.reference import filters as R


def rand(*shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a.double().cpu(), b.double().cpu(), rtol=tol, atol=tol, equal_nan=True)


# ---- box_filter ------------------------------------------------------------------------------

@pytest.mark.parametrize("W", [1, 3, 17, 255, 257])
def test_box_matches_reference_widths(backend_device, W):
    b, dev = backend_device
    x = rand(2, 2, 5, W, device=dev, seed=W)
    for r in (1, 4, 300):  # 300 > H, W: every window is the whole image
        close(ops.box_filter(x, r, backend=b), R.box_filter(x, r))


def test_box_brute_force_definition():
    # the reference itself against the definition, by explicit clipped windows
    x = rand(1, 1, 6, 9)
    r = 2
    want = torch.empty_like(x)
    for i in range(6):
        for j in range(9):
            want[0, 0, i, j] = x[0, 0, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
    close(R.box_filter(x, r), want, 1e-14)
    close(ops.box_filter(x, r, backend="cpu"), want, 1e-14)


def test_box_ones_and_identity(backend_device):
    b, dev = backend_device
    x = torch.ones(1, 1, 5, 7, device=dev)
    y = ops.box_filter(x, 10, backend=b)
    assert torch.equal(y, torch.ones_like(x))
    z = rand(1, 2, 5, 7, device=dev)
    z0 = ops.box_filter(z, 0, backend=b)  # a copy, never z itself (bug-cases row 33: no aliasing)
    assert torch.equal(z0, z) and z0.untyped_storage().data_ptr() != z.untyped_storage().data_ptr()


def test_box_constant_large_image_cpu():
    # running sums restarted per row/column in float64: a constant stays constant, any r
    x = torch.full((1, 1, 2708, 1800), 0.7)
    for r in (60, 5000):
        y = ops.box_filter(x, r, backend="cpu")
        assert (y - 0.7).abs().max().item() <= 1e-7


def test_box_accuracy_5mp_cpu():
    x = rand(1, 1, 2708, 1800, dtype=torch.float32, seed=3)
    y = ops.box_filter(x, 60, backend="cpu")
    ref = R.box_filter(x.double(), 60)
    err = (y.double() - ref).abs().max().item()
    assert err < 2e-7, err  # float32 rounding of the result, not a drift along the image


def test_box_gradient(backend_device):
    b, dev = backend_device
    x = rand(1, 2, 4, 5, device=dev).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.box_filter(t, 2, backend=b), (x,), fast_mode=b == "triton")
    g = rand(1, 2, 4, 5, device=dev, seed=9)
    xr = x.detach().clone().requires_grad_()
    R.box_filter(xr, 2).backward(g)
    ops.box_filter(x, 2, backend=b).backward(g)
    close(x.grad, xr.grad)


def test_box_opcheck(backend_device):
    b, dev = backend_device
    for name, op in F_ops._box.ops().items():
        if (name == "native") != (b != "triton"):
            continue
        for rg in (False, True):
            x = rand(1, 2, 3, 5, device=dev).requires_grad_(rg)
            torch.library.opcheck(op, (x, 1))
    bwd = F_ops._box.native_backward if b != "triton" else F_ops._box.triton_backward
    torch.library.opcheck(bwd, (rand(1, 1, 3, 4, device=dev), 2))


def test_box_compile(backend_device):
    b, dev = backend_device
    x = rand(1, 1, 6, 7, device=dev)
    f = torch.compile(lambda t: ops.box_filter(t, 2, backend=b) * 2, fullgraph=True)
    close(f(x), 2 * R.box_filter(x, 2))


def test_box_batch0_noncontiguous_channels_last(backend_device):
    b, dev = backend_device
    assert ops.box_filter(torch.empty(0, 3, 4, 5, device=dev), 2, backend=b).shape == (0, 3, 4, 5)
    nhwc = rand(2, 6, 7, 3, device=dev).permute(0, 3, 1, 2)
    close(ops.box_filter(nhwc, 2, backend=b), R.box_filter(nhwc, 2))
    sl = rand(2, 3, 9, 11, device=dev)[:, 1:, 1:8:2, ::3]
    close(ops.box_filter(sl, 1, backend=b), R.box_filter(sl, 1))
    cl = rand(1, 3, 5, 6, device=dev).to(memory_format=torch.channels_last)
    close(ops.box_filter(cl, 1, backend=b), R.box_filter(cl, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_box_low_precision(backend_device, dtype):
    b, dev = backend_device
    x = rand(1, 2, 7, 9, device=dev).to(dtype)
    y = ops.box_filter(x, 2, backend=b)
    assert y.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6}[dtype]
    close(y, R.box_filter(x.double(), 2), tol)


def test_box_nan_stays_in_its_windows(backend_device):
    b, dev = backend_device
    x = rand(1, 1, 9, 11, device=dev)
    x[0, 0, 4, 5] = float("nan")
    x[0, 0, 0, 0] = float("inf")
    y = ops.box_filter(x, 1, backend=b)
    bad = torch.zeros(9, 11, dtype=torch.bool)
    bad[3:6, 4:7] = True
    bad[0:2, 0:2] = True
    assert torch.equal(y[0, 0].isnan().cpu(), bad)
    close(y, R.box_filter(x, 1))


def test_box_bad_input():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="r must be >= 0"):
        ops.box_filter(x, -1)
    with pytest.raises(TypeError, match="r must be an int"):
        ops.box_filter(x, 1.5)
    with pytest.raises(TypeError, match="x must be a floating"):
        ops.box_filter(x.to(torch.uint8), 1)
    with pytest.raises(ValueError, match="x must have 4 dims"):
        ops.box_filter(torch.rand(4, 4), 1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.box_filter([1.0], 1)


# ---- guided_filter ---------------------------------------------------------------------------

@pytest.mark.parametrize("G,C", [(1, 1), (1, 2), (3, 1), (3, 2)])
def test_guided_matches_reference(backend_device, G, C):
    b, dev = backend_device
    I, p = rand(2, G, 9, 17, device=dev, seed=1), rand(2, C, 9, 17, device=dev, seed=2)
    close(ops.guided_filter(I, p, 3, 1e-2, backend=b), R.guided_filter(I, p, 3, 1e-2))


def test_guided_reference_against_he_formula():
    # gray guide: the reference against He's Alg. 1 written out with the reference box filter
    I, p = rand(1, 1, 8, 10, seed=4), rand(1, 1, 8, 10, seed=5)
    r, eps, box = 2, 1e-2, R.box_filter
    mI, mp = box(I, r), box(p, r)
    a = (box(I * p, r) - mI * mp) / (box(I * I, r) - mI * mI + eps)
    bb = mp - a * mI
    close(R.guided_filter(I, p, r, eps), box(a, r) * I + box(bb, r), 1e-14)
    # colour guide: against torch.linalg.solve of (Sigma + eps U) a = cov
    I3 = rand(1, 3, 6, 7, seed=6)
    mI3, mp = box(I3, r), box(p[..., :6, :7], r)
    Ic = I3.permute(0, 2, 3, 1)
    Sig = box((Ic[..., :, None] * Ic[..., None, :]).reshape(1, 6, 7, 9).permute(0, 3, 1, 2), r)
    Sig = Sig.permute(0, 2, 3, 1).reshape(1, 6, 7, 3, 3) - mI3.permute(0, 2, 3, 1)[..., :, None] * mI3.permute(0, 2, 3, 1)[..., None, :]
    cov = box(I3 * p[..., :6, :7], r) - mI3 * mp
    a = torch.linalg.solve(Sig + eps * torch.eye(3, dtype=torch.float64), cov.permute(0, 2, 3, 1)[..., None])[..., 0]
    a = a.permute(0, 3, 1, 2)
    bb = mp - (a * mI3).sum(1, keepdim=True)
    close(R.guided_filter(I3, p[..., :6, :7], r, eps), (box(a, r) * I3).sum(1, keepdim=True) + box(bb, r), 1e-12)


def test_guided_identities(backend_device):
    b, dev = backend_device
    p = rand(1, 2, 11, 13, device=dev, seed=7)
    const = torch.full((1, 1, 11, 13), 0.4, dtype=torch.float64, device=dev)
    close(ops.guided_filter(const, p, 2, 1e-3, backend=b), R.box_filter(R.box_filter(p, 2), 2), 1e-9)
    I = rand(1, 1, 11, 13, device=dev, seed=8)
    close(ops.guided_filter(I.expand(1, 3, 11, 13), p, 2, 3e-2, backend=b),
          ops.guided_filter(I, p, 2, 1e-2, backend=b), 1e-9)
    q = ops.guided_filter(I, I, 2, 1e-8, backend=b)
    assert (q - I).abs().max().item() < 1e-4


@pytest.mark.parametrize("W", [1, 3, 17, 257])
def test_guided_widths(W):
    for b in ("cpu",):
        I, p = rand(1, 1, 4, W, seed=W), rand(1, 1, 4, W, seed=W + 1)
        close(ops.guided_filter(I, p, 2, 1e-3, backend=b), R.guided_filter(I, p, 2, 1e-3))


def test_guided_gradients(backend_device):
    b, dev = backend_device
    for G in (1, 3):
        I = rand(1, G, 4, 5, device=dev, seed=10).requires_grad_()
        p = rand(1, 2, 4, 5, device=dev, seed=11).requires_grad_()
        if b != "triton":  # the interpreter is slow; the Triton path composes its box filters, gradchecked above
            assert torch.autograd.gradcheck(lambda i, s: ops.guided_filter(i, s, 1, 1e-2, backend=b), (I, p))
        g = rand(1, 2, 4, 5, device=dev, seed=12)
        Ir, pr = I.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
        R.guided_filter(Ir, pr, 1, 1e-2).backward(g)
        ops.guided_filter(I, p, 1, 1e-2, backend=b).backward(g)
        close(I.grad, Ir.grad, 1e-9)
        close(p.grad, pr.grad, 1e-9)


def test_guided_subsample(backend_device):
    b, dev = backend_device
    I, p = rand(1, 1, 13, 18, device=dev, seed=13), rand(1, 1, 13, 18, device=dev, seed=14)
    q = ops.guided_filter(I, p, 4, 1e-2, subsample=2, backend=b)
    close(q, R.guided_filter(I, p, 4, 1e-2, subsample=2))
    # explicitly: coefficients on x[::2, ::2] with radius 2, bilinear upsampling
    ma, mb = R.guided_coefficients(I[..., ::2, ::2], p[..., ::2, ::2], 2, 1e-2)
    up = lambda t: torch.nn.functional.interpolate(t, size=(13, 18), mode="bilinear", align_corners=False)
    close(q, up(ma) * I + up(mb))
    assert ops.guided_filter(I[:0], p[:0], 4, 1e-2, subsample=2, backend=b).shape == (0, 1, 13, 18)


def test_guided_fused_path_is_used(monkeypatch):
    calls = []
    orig = F_ops._gf.__call__

    def spy(self, *a):
        calls.append(a[0])
        return orig(*a)

    monkeypatch.setattr(type(F_ops._gf), "__call__", spy)
    I, p = rand(1, 1, 5, 6), rand(1, 1, 5, 6)
    ops.guided_filter(I, p, 1, 1e-2, backend="cpu")
    assert calls == ["cpu"]


def test_guided_opcheck(backend_device):
    b, dev = backend_device
    for name, op in F_ops._gf.ops().items():
        if (name == "native") != (b != "triton"):
            continue
        for G in (1, 3):
            torch.library.opcheck(op, (rand(1, G, 4, 5, device=dev), rand(1, 2, 4, 5, device=dev), 1, 1e-2),
                                  test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_guided_compile(backend_device):
    b, dev = backend_device
    I, p = rand(1, 1, 6, 7, device=dev), rand(1, 1, 6, 7, device=dev, seed=1)
    f = torch.compile(lambda i, s: ops.guided_filter(i, s, 2, 1e-2, backend=b), fullgraph=True)
    close(f(I, p), R.guided_filter(I, p, 2, 1e-2))


def test_guided_batch0_noncontiguous_channels_last(backend_device):
    b, dev = backend_device
    assert ops.guided_filter(torch.empty(0, 1, 4, 5, device=dev), torch.empty(0, 2, 4, 5, device=dev), 1,
                             backend=b).shape == (0, 2, 4, 5)
    I = rand(1, 7, 8, 3, device=dev).permute(0, 3, 1, 2)
    p = rand(1, 9, 10, 2, device=dev)[:, 1:8, 1:9].permute(0, 3, 1, 2)
    close(ops.guided_filter(I, p, 2, 1e-2, backend=b), R.guided_filter(I, p, 2, 1e-2))
    Icl = rand(1, 3, 6, 5, device=dev).to(memory_format=torch.channels_last)
    close(ops.guided_filter(Icl, Icl, 1, 1e-2, backend=b), R.guided_filter(Icl, Icl, 1, 1e-2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_guided_low_precision(backend_device, dtype):
    b, dev = backend_device
    for G in (1, 3):
        I, p = rand(1, G, 7, 9, device=dev).to(dtype), rand(1, 2, 7, 9, device=dev, seed=3).to(dtype)
        q = ops.guided_filter(I, p, 2, 1e-2, backend=b)
        assert q.dtype == dtype
        tol = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}[dtype]
        close(q, R.guided_filter(I.double(), p.double(), 2, 1e-2), tol)


def test_guided_nan(backend_device):
    b, dev = backend_device
    I, p = rand(1, 1, 9, 11, device=dev), rand(1, 1, 9, 11, device=dev, seed=1)
    p[0, 0, 0, 0] = float("nan")
    q = ops.guided_filter(I, p, 1, 1e-2, backend=b)
    assert q[0, 0, :3, :3].isnan().all() and not q[0, 0, 5:, 5:].isnan().any()
    close(q, R.guided_filter(I, p, 1, 1e-2))


def test_guided_dcp_size_cpu():
    # the DCP call: luma guide, t map, r = 60, eps = 1e-3 on a 2708 x 1800 photo
    I, p = rand(1, 1, 2708, 1800, dtype=torch.float32, seed=1), rand(1, 1, 2708, 1800, dtype=torch.float32, seed=2)
    q = ops.guided_filter(I, p, 60, 1e-3, backend="cpu")
    close(q, R.guided_filter(I.double(), p.double(), 60, 1e-3), 1e-5)


def test_guided_bad_input():
    I, p = torch.rand(1, 1, 4, 4), torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="guide must have 1 .* or 3"):
        ops.guided_filter(torch.rand(1, 2, 4, 4), p)
    with pytest.raises(ValueError, match="same B, H, W"):
        ops.guided_filter(I, torch.rand(1, 2, 4, 5))
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.guided_filter(I, p, 1, 0.0)
    with pytest.raises(TypeError, match="eps must be a float"):
        ops.guided_filter(I, p, 1, "x")
    with pytest.raises(ValueError, match="r must be >= 0"):
        ops.guided_filter(I, p, -2)
    with pytest.raises(ValueError, match="subsample must be >= 1"):
        ops.guided_filter(I, p, 1, subsample=0)
    with pytest.raises(TypeError, match="subsample must be an int"):
        ops.guided_filter(I, p, 1, subsample=2.0)
    with pytest.raises(TypeError, match="src must be a floating"):
        ops.guided_filter(I, p.to(torch.int32))
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.guided_filter(I, p, backend="gpu")


def test_guided_radius0(backend_device):
    # r = 0: every mean is the pixel itself, var = cov = 0, a = 0, q = p
    b, dev = backend_device
    I, p = rand(1, 3, 5, 6, device=dev), rand(1, 2, 5, 6, device=dev, seed=1)
    for G in (1, 3):
        q = ops.guided_filter(I[:, :G], p, 0, 1e-2, backend=b)
        close(q, R.guided_filter(I[:, :G], p, 0, 1e-2))
        close(q, p, 1e-12)
