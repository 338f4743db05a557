"""Tests of the dark channel prior ops (SPEC section 2; issue 3 items 1 and 5).

Every fused backend (backend_device fixture: C++ CPU and interpreted Triton here) against the
float64 reference of fastdehaze.reference.dcp, and the reference itself against a brute-force
loop (values and the gradient tie rule, with many ties). Interpreter inputs stay tiny.
"""
import functools
import math

import numpy as np
import pytest
import torch

import fastdehaze.ops as ops
from fastdehaze.ops import dcp as dcp_ops
from fastdehaze.reference import dcp as ref


# ---- brute force ---------------------------------------------------------------------------

def brute_channel(I, patch, is_max):
    """(values [B,1,H,W], grad target (c, y, x) per output) by plain loops, float64 numpy."""
    x = I.detach().double().numpy()
    B, C, H, W = x.shape
    r = patch // 2
    out = np.empty((B, 1, H, W))
    tgt = np.empty((B, H, W, 3), dtype=np.int64)
    for b in range(B):
        for y in range(H):
            for xx in range(W):
                best, arg = None, None
                for yy in range(max(0, y - r), min(H, y + r + 1)):
                    for xc in range(max(0, xx - r), min(W, xx + r + 1)):
                        for c in range(C):
                            v = x[b, c, yy, xc]
                            if best is None:
                                better = True
                            elif math.isnan(v):
                                better = not math.isnan(best)
                            elif math.isnan(best):
                                better = False
                            else:
                                better = v > best if is_max else v < best
                            if better:
                                best, arg = v, (c, yy, xc)
                out[b, 0, y, xx] = best
                tgt[b, y, xx] = arg
    return torch.from_numpy(out), tgt


def brute_grad(I, g, tgt):
    B, C, H, W = I.shape
    out = np.zeros((B, C, H, W))
    gn = g.double().numpy()
    for b in range(B):
        for y in range(H):
            for x in range(W):
                c, yy, xx = tgt[b, y, x]
                out[b, c, yy, xx] += gn[b, 0, y, x]
    return torch.from_numpy(out)


def brute_A(I, dark, top):
    B, C, H, W = I.shape
    k = max(1, int(math.floor(top * H * W)))
    out = torch.empty(B, C, 1, 1, dtype=torch.float64)
    for b in range(B):
        d = dark[b, 0].reshape(-1).double().tolist()
        key = [(1 if math.isnan(v) else 0, -math.inf if math.isnan(v) else v, -i) for i, v in enumerate(d)]
        order = sorted(range(len(d)), key=lambda i: key[i], reverse=True)[:k]
        out[b, :, 0, 0] = I[b].reshape(C, -1)[:, order].double().mean(1)
    return out


@functools.lru_cache(maxsize=None)
def _brute_cached(H, W, patch, is_max):
    return brute_channel(tied((2, 3, H, W), seed=H * 1000 + W), patch, is_max)


def tied(shape, levels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=g).double() / (levels - 1)


def distinct(shape, seed=0):
    """Values without ties (a random permutation), for gradcheck."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    return (torch.randperm(n, generator=g).double() / n).reshape(shape)


def sizes_for(device_backend):
    backend, _ = device_backend
    return [(1, 1), (3, 1), (1, 3), (5, 17), (17, 3), (4, 257)] if backend == "triton" else \
        [(1, 1), (3, 1), (1, 3), (5, 17), (17, 3), (4, 257), (3, 255), (12, 20)]


# ---- dark / bright channel -------------------------------------------------------------------

@pytest.mark.parametrize("is_max", [False, True], ids=["dark", "bright"])
@pytest.mark.parametrize("patch", [1, 3, 15])
def test_reference_matches_brute_force(patch, is_max):
    I = tied((2, 3, 7, 9)).requires_grad_()
    f = ref.bright_channel if is_max else ref.dark_channel
    out = f(I, patch)
    want, tgt = brute_channel(I, patch, is_max)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    g = torch.randn_like(out)
    (gi,) = torch.autograd.grad(out, I, g)
    torch.testing.assert_close(gi, brute_grad(I, g, tgt), rtol=0, atol=1e-12)


@pytest.mark.parametrize("is_max", [False, True], ids=["dark", "bright"])
def test_channel_values_and_tie_gradients(backend_device, is_max):
    backend, device = backend_device
    f = ops.bright_channel if is_max else ops.dark_channel
    for (H, W) in sizes_for(backend_device):
        for patch in (1, 3, 15):
            I = tied((2, 3, H, W), seed=H * 1000 + W).to(device).requires_grad_()
            out = f(I, patch, backend=backend)
            want, tgt = _brute_cached(H, W, patch, is_max)
            torch.testing.assert_close(out.cpu(), want, rtol=0, atol=0, msg=f"{H}x{W} patch {patch}")
            g = torch.randn(out.shape, dtype=torch.float64)
            (gi,) = torch.autograd.grad(out, I, g.to(device))
            torch.testing.assert_close(gi.cpu(), brute_grad(I.cpu(), g, tgt), rtol=0, atol=1e-12,
                                       msg=f"grad {H}x{W} patch {patch}")


@pytest.mark.parametrize("is_max", [False, True], ids=["dark", "bright"])
def test_channel_gradcheck(backend_device, is_max):
    backend, device = backend_device
    f = ops.bright_channel if is_max else ops.dark_channel
    I = distinct((1, 2, 5, 6)).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: f(x, 3, backend=backend), (I,))


def test_constant_image_border():
    I = torch.full((1, 3, 37, 53), 0.8)
    for backend in ("reference", "cpu"):
        d = ops.dark_channel(I, 15, backend=backend)
        assert d.shape == (1, 1, 37, 53)
        assert torch.equal(d, torch.full_like(d, 0.8)), backend


def test_constant_image_border_triton():
    I = torch.full((1, 3, 37, 53), 0.8, device="cuda" if torch.cuda.is_available() else "cpu")
    if not fastdehaze_triton_ok():
        pytest.skip("triton unavailable")
    d = ops.dark_channel(I, 15, backend="triton")
    assert torch.equal(d, torch.full_like(d, 0.8))


def fastdehaze_triton_ok():
    import fastdehaze
    return fastdehaze.available_backends("cuda" if torch.cuda.is_available() else "cpu", "dcp")["triton"]


def test_channel_nan(backend_device):
    backend, device = backend_device
    I = torch.rand(1, 3, 9, 10, dtype=torch.float64)
    I[0, 1, 4, 5] = float("nan")
    for f, rf in ((ops.dark_channel, ref.dark_channel), (ops.bright_channel, ref.bright_channel)):
        out = f(I.to(device), 3, backend=backend).cpu()
        want = rf(I, 3)
        assert torch.isnan(out[0, 0, 3:6, 4:7]).all()
        assert torch.isnan(out).sum() == 9
        torch.testing.assert_close(out, want, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2), (torch.float32, 0)])
def test_channel_half(backend_device, dtype, tol):
    backend, device = backend_device
    I = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    x = I.to(dtype)
    for f, rf in ((ops.dark_channel, ref.dark_channel), (ops.bright_channel, ref.bright_channel)):
        out = f(x.to(device), 5, backend=backend)
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu().double(), rf(x.double(), 5), rtol=0, atol=tol)


def test_layouts(backend_device):
    backend, device = backend_device
    base = torch.rand(2, 13, 11, 3, dtype=torch.float64)
    nhwc = base.permute(0, 3, 1, 2)                       # non-contiguous (permuted NHWC)
    sl = torch.rand(2, 5, 13, 20, dtype=torch.float64)[:, 1:4, :, ::2]  # a slice
    cl = torch.rand(2, 3, 9, 7, dtype=torch.float64).to(memory_format=torch.channels_last)
    A = torch.tensor([0.7, 0.8, 0.9], dtype=torch.float64).reshape(1, 3, 1, 1)
    for I in (nhwc, sl, cl):
        Id = I.to(device)
        torch.testing.assert_close(ops.dark_channel(Id, 3, backend=backend).cpu(), ref.dark_channel(I, 3))
        torch.testing.assert_close(ops.bright_channel(Id, 5, backend=backend).cpu(), ref.bright_channel(I, 5))
        torch.testing.assert_close(ops.transmission(Id, A.to(device), 0.9, 3, backend=backend).cpu(),
                                   ref.transmission(I, A, 0.9, 3))
        torch.testing.assert_close(ops.atmospheric_light(Id, top=0.05, patch=3, backend=backend).cpu(),
                                   ref.atmospheric_light(I, top=0.05, patch=3))


def test_batch_zero(backend_device):
    backend, device = backend_device
    I = torch.rand(0, 3, 8, 9, device=device)
    assert ops.dark_channel(I, 3, backend=backend).shape == (0, 1, 8, 9)
    assert ops.bright_channel(I, 3, backend=backend).shape == (0, 1, 8, 9)
    assert ops.transmission(I, 0.8, backend=backend).shape == (0, 1, 8, 9)
    assert ops.atmospheric_light(I, backend=backend).shape == (0, 3, 1, 1)
    x = I.clone().requires_grad_()
    ops.dark_channel(x, 3, backend=backend).sum().backward()
    assert x.grad.shape == x.shape


def test_bad_input():
    I = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="patch"):
        ops.dark_channel(I, 4)
    with pytest.raises(ValueError, match="patch"):
        ops.bright_channel(I, 0)
    with pytest.raises(ValueError, match="patch"):
        ops.dark_channel(I, -3)
    with pytest.raises(TypeError, match="patch"):
        ops.dark_channel(I, 3.0)
    with pytest.raises(TypeError, match="I"):
        ops.dark_channel((I * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="I"):
        ops.dark_channel(I[0])
    with pytest.raises(ValueError, match="top"):
        ops.atmospheric_light(I, top=1.5)
    with pytest.raises(ValueError, match="dark"):
        ops.atmospheric_light(I, dark=torch.rand(1, 1, 8, 7))
    with pytest.raises(ValueError, match="omega"):
        ops.transmission(I, 0.8, omega=2.0)
    with pytest.raises(ValueError, match="A"):
        ops.transmission(I, torch.rand(2, 3, 1, 1))
    with pytest.raises(TypeError, match="A"):
        ops.transmission(I, "x")
    with pytest.raises(ValueError, match="t0"):
        ops.dehaze_dcp(I, t0=0.0)
    with pytest.raises(ValueError, match="eps"):
        ops.dehaze_dcp(I, eps=0.0)
    with pytest.raises(ValueError, match="r"):
        ops.dehaze_dcp(I, r=-1)
    with pytest.raises(ValueError, match="patch"):
        ops.dehaze_dcp(I, patch=2)
    with pytest.raises(ValueError, match="backend"):
        ops.dark_channel(I, backend="nope")


# ---- atmospheric light ------------------------------------------------------------------------

def test_atmospheric_light_ties_and_nan(backend_device):
    backend, device = backend_device
    I = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    dark = tied((2, 1, 10, 12), levels=4, seed=3)
    dark[1, 0, 2, 3] = float("nan")
    dark[1, 0, 7, 1] = float("nan")
    for top in (0.0, 0.01, 0.05, 0.3, 1.0):
        want = brute_A(I, dark, top)
        torch.testing.assert_close(ref.atmospheric_light(I, dark, top), want, msg=f"reference top {top}")
        got = ops.atmospheric_light(I.to(device), dark.to(device), top, backend=backend).cpu()
        torch.testing.assert_close(got, want, msg=f"top {top}")
    # negative values and -0.0 / 0.0 order too
    dark2 = torch.tensor([[-0.5, 0.0, -0.0, 0.25, -1.0, 0.25]], dtype=torch.float64).reshape(1, 1, 2, 3)
    I2 = torch.rand(1, 2, 2, 3, dtype=torch.float64)
    got = ops.atmospheric_light(I2.to(device), dark2.to(device), 0.5, backend=backend).cpu()
    torch.testing.assert_close(got, brute_A(I2, dark2, 0.5))


def test_atmospheric_light_issue_cases(backend_device):
    backend, device = backend_device
    I = torch.full((1, 3, 64, 64), 0.2)
    I[:, :, :8, :8] = 0.0
    I[:, :, 30:46, 40:56] = torch.tensor([0.9, 0.85, 0.8]).reshape(1, 3, 1, 1)
    A = ops.atmospheric_light(I.to(device), backend=backend).cpu()
    torch.testing.assert_close(A.flatten(), torch.tensor([0.9, 0.85, 0.8]))
    for shape in ((1, 3, 16, 16), (1, 3, 1, 1)):
        I = torch.rand(shape)
        A = ops.atmospheric_light(I.to(device), backend=backend).cpu()
        assert torch.isfinite(A).all()
        # k = 1: A is the pixel with the largest dark value (first one on ties)
        d = ref.dark_channel(I)
        i = int(torch.argmax(d.flatten()))
        torch.testing.assert_close(A.flatten(), I.reshape(3, -1)[:, i])
    dtype_I = torch.rand(1, 3, 9, 9, dtype=torch.float16)
    assert ops.atmospheric_light(dtype_I.to(device), backend=backend).dtype == torch.float16


# ---- transmission --------------------------------------------------------------------------

def test_transmission(backend_device):
    backend, device = backend_device
    I = torch.rand(2, 3, 9, 17, dtype=torch.float64)
    for A in (0.8, torch.tensor([0.7, 0.9, 0.6], dtype=torch.float64).reshape(1, 3, 1, 1),
              torch.rand(2, 3, 1, 1, dtype=torch.float64) + 0.5, torch.tensor(0.9, dtype=torch.float64)):
        Ad = A.to(device) if isinstance(A, torch.Tensor) else A
        got = ops.transmission(I.to(device), Ad, 0.95, 5, backend=backend).cpu()
        a = A if isinstance(A, torch.Tensor) else torch.tensor(A, dtype=torch.float64)
        want = 1 - 0.95 * brute_channel(I / a.reshape(-1, 3 if a.numel() > 1 else 1, 1, 1), 5, False)[0]
        torch.testing.assert_close(got, want)


def test_black_and_zero_A_finite(backend_device):
    backend, device = backend_device
    black = torch.zeros(1, 3, 12, 13, device=device)
    t = ops.transmission(black, 0.0, backend=backend)
    assert torch.isfinite(t).all() and torch.equal(t.cpu(), torch.ones(1, 1, 12, 13))
    t = ops.transmission(torch.rand(1, 3, 12, 13, device=device), 0.0, backend=backend)
    assert torch.isfinite(t).all()
    A = ops.atmospheric_light(black, backend=backend)
    assert torch.isfinite(A).all()


# ---- dehaze_dcp ---------------------------------------------------------------------------

def _hazy(B, H, W, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    J = torch.rand(B, 3, H, W, generator=g, dtype=dtype)
    t = torch.rand(B, 1, H, W, generator=g, dtype=dtype) * 0.6 + 0.3
    return J * t + 0.9 * (1 - t)


def test_dehaze_dcp_matches_reference(backend_device):
    backend, device = backend_device
    shapes = [(1, 9, 11, 3, 4), (2, 17, 3, 1, 2)] if backend == "triton" else \
        [(1, 9, 11, 3, 4), (2, 17, 3, 1, 2), (1, 41, 67, 15, 60), (1, 1, 257, 15, 60), (1, 255, 3, 7, 5)]
    for B, H, W, patch, r in shapes:
        I = _hazy(B, H, W)
        got = ops.dehaze_dcp(I.to(device), patch=patch, r=r, return_all=True, backend=backend)
        want = ref.dehaze_dcp(I, patch=patch, r=r, return_all=True)
        for name, a, b in zip(("J", "t", "A"), got, want):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-9, msg=f"{name} {H}x{W}")
        J, t, A = got
        assert J.min() >= 0 and J.max() <= 1 and t.min() >= 0.1 and t.max() <= 1


def test_dehaze_dcp_float32_and_half(backend_device):
    backend, device = backend_device
    I = _hazy(1, 13, 15)
    want = ref.dehaze_dcp(I, patch=5, r=4, return_all=True)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        got = ops.dehaze_dcp(I.to(dtype).to(device), patch=5, r=4, return_all=True, backend=backend)
        assert got[0].dtype == dtype and got[1].dtype == dtype
        for a, b in zip(got, want):
            torch.testing.assert_close(a.cpu().double(), b, rtol=0, atol=tol)


def test_dehaze_dcp_black_and_batch0(backend_device):
    backend, device = backend_device
    J, t, A = ops.dehaze_dcp(torch.zeros(1, 3, 8, 9, device=device), r=2, return_all=True, backend=backend)
    assert torch.isfinite(J).all() and torch.isfinite(t).all() and torch.isfinite(A).all()
    J = ops.dehaze_dcp(torch.zeros(0, 3, 8, 9, device=device), r=2, backend=backend)
    assert J.shape == (0, 3, 8, 9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_dehaze_dcp_nonfinite_pixel_matches_reference(backend_device, bad):
    """A NaN/inf pixel spreads exactly as in the reference (window mins, box sums, recovery)."""
    backend, device = backend_device
    I = _hazy(1, 17, 19)
    I[0, 1, 8, 9] = bad
    got = ops.dehaze_dcp(I.to(device), patch=5, r=3, return_all=True, backend=backend)
    want = ref.dehaze_dcp(I, patch=5, r=3, return_all=True)
    for name, a, b in zip(("J", "t", "A"), got, want):
        assert torch.equal(torch.isnan(a.cpu()), torch.isnan(b)), name
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-9, equal_nan=True, msg=name)
    assert torch.isnan(want[0]).any()  # the case exercises the non-finite path at all


def test_large_sizes_cpu():
    # 1x1x2708x1800 dark channel and 412x548 DCP on the C++ backend vs the reference
    g = torch.Generator().manual_seed(1)
    I = torch.rand(1, 1, 2708, 1800, generator=g)
    torch.testing.assert_close(ops.dark_channel(I, backend="cpu"), ref.dark_channel(I), rtol=0, atol=0)
    I = _hazy(1, 412, 548, dtype=torch.float32)
    got = ops.dehaze_dcp(I, return_all=True, backend="cpu")
    want = ref.dehaze_dcp(I.double(), return_all=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=2e-4)


# ---- registration: opcheck and torch.compile --------------------------------------------------

def _samples(device):
    I = distinct((2, 3, 5, 6)).to(device)
    return {
        dcp_ops._dark_channel: [(I.clone().requires_grad_(), 3), (I.float(), 5)],
        dcp_ops._bright_channel: [(I.clone().requires_grad_(), 3), (I.float(), 1)],
        dcp_ops._atmospheric_light: [(I, ref.dark_channel(I.cpu(), 3).to(device), 2)],
        dcp_ops._transmission: [(I, torch.full((2, 3), 0.8, dtype=torch.float64, device=device), 0.95, 3)],
    }


def test_opcheck(backend_device):
    backend, device = backend_device
    for op, samples in _samples(device).items():
        forms = op.ops()
        form = forms["triton"] if backend == "triton" else forms["native"]
        for args in samples:
            torch.library.opcheck(form, args)


def test_compile_fullgraph(backend_device):
    backend, device = backend_device
    torch._dynamo.reset()

    def f(x):
        d = ops.dark_channel(x, 3, backend=backend)
        A = ops.atmospheric_light(x, d, 0.1, backend=backend)
        return d, ops.bright_channel(x, 3, backend=backend), ops.transmission(x, A, 0.9, 3, backend=backend)

    x = torch.rand(1, 3, 6, 7, dtype=torch.float64, device=device)
    got = torch.compile(f, fullgraph=True)(x)
    for a, b in zip(got, f(x)):
        torch.testing.assert_close(a, b)
    if backend == "cpu":
        g = torch.compile(lambda x: ops.dehaze_dcp(x, patch=3, r=2, backend="cpu"), fullgraph=True)
        torch.testing.assert_close(g(x), ops.dehaze_dcp(x, patch=3, r=2, backend="cpu"))
