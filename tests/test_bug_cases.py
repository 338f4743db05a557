"""Public bug reports of other projects turned into inputs (../shared/reviews/bug-cases.md).

One test (or a few) per row, the CPU-checkable part, on the C++ CPU backend and Triton under the
interpreter (``backend_device``). The GPU-only parts (grid y/z >= 65536 launches, GPU
determinism, the GPU's Triton compile of fp16/bf16 exp paths) are cases of
benchmarks/gpu_smoke.py (group ``bugcase``). Inputs are tiny: the interpreter runs every
program as Python.
"""
import pytest
import torch

import fastdehaze.ops as F


def _rand(*shape, dtype=torch.float32, dev="cpu", seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype).to(dev).requires_grad_(grad)


# ---- row 27: reductions accumulate in fp32 for fp16/bf16 -------------------------------------
@pytest.mark.parametrize("dtype,value", [(torch.bfloat16, 1.0), (torch.float16, 255.0)])
def test_row27_box_filter_half_window_sum_in_fp32(backend_device, dtype, value):
    b, dev = backend_device
    # a 121 x 121 window of ones: 14641 > 256 (bf16 stops counting) and 255 * 14641 > 65504 (fp16)
    x = torch.full((1, 1, 130, 130), value, dtype=dtype, device=dev)
    y = F.box_filter(x, 60, backend=b)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float().cpu(), torch.full((1, 1, 130, 130), value), rtol=1e-2, atol=0)


def test_row27_softmax_weight_bf16_denominator(backend_device):
    b, dev = backend_device
    H = W = 48  # 3 * 48 * 48 = 6912 equal logits: a bf16 running sum would stop at 256
    w = F.difference_perception_weight(torch.zeros(1, 3, H, W, dtype=torch.bfloat16, device=dev), backend=b)
    exp = 1.0 / (H * W) + 3 * 1e-7
    torch.testing.assert_close(w.float().cpu(), torch.full((1, 1, H, W), exp), rtol=1e-2, atol=0)


def test_row27_contrastive_l1_mean_bf16(backend_device):
    b, dev = backend_device
    a = _rand(2, 8, 32, 32, dtype=torch.bfloat16, dev=dev)
    p = (a.float() + 0.1).to(torch.bfloat16)
    exp = (p.float() - a.float()).abs().mean()  # ~0.1, over 16384 elements (> 256)
    d = F.contrastive_distance(a, p, ablation=True, backend=b)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d.cpu(), exp.cpu(), rtol=1e-3, atol=0)


# ---- row 28: exp of fp16/bf16 inputs computed in fp32 ----------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_row28_transmission_from_depth_half(backend_device, dtype, tol):
    b, dev = backend_device
    d = (_rand(1, 1, 16, 16) * 10).to(dtype).to(dev)
    t = F.transmission_from_depth(d, 1.0, backend=b)
    assert t.dtype == dtype
    torch.testing.assert_close(t.float().cpu(), torch.exp(-d.float()).cpu(), rtol=tol, atol=tol)


# ---- row 31: stride-0 grad_output and broadcast (expanded) inputs ----------------------------
_GRAD_CASES = {
    "dark_channel": (lambda b, x: F.dark_channel(x, 7, backend=b), (2, 3, 13, 17)),
    "box_filter": (lambda b, x: F.box_filter(x, 3, backend=b), (2, 3, 13, 17)),
    "guided_filter": (lambda b, x: F.guided_filter(x, x[:, :1] * 0.5, r=3, eps=1e-3, backend=b), (2, 3, 13, 17)),
    "recover": (lambda b, x: F.recover(x, torch.full_like(x[:, :1], 0.6), 0.8, backend=b), (2, 3, 13, 17)),
    "transmission_from_depth": (lambda b, x: F.transmission_from_depth(x, 1.0, backend=b), (2, 1, 13, 17)),
    "contrastive": (lambda b, x: F.contrastive_distance(x, x.detach().flip(-1), x.detach()[None] * 0.5, backend=b),
                    (2, 3, 13, 17)),
    "depth_loss": (lambda b, x: F.depth_difference_loss(x, x.detach().flip(-1), x[:, :1], x.detach()[:, 1:2], backend=b),
                   (2, 3, 13, 17)),
}


@pytest.mark.parametrize("name", list(_GRAD_CASES))
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_row31_expanded_grad_output(backend_device, name, reduce):
    b, dev = backend_device
    fn, shape = _GRAD_CASES[name]
    x1 = _rand(*shape, dtype=torch.float64, dev=dev, grad=True)
    y = fn(b, x1)
    getattr(y, reduce)().backward()  # grad_output of stride 0
    x2 = _rand(*shape, dtype=torch.float64, dev=dev, grad=True)
    y2 = fn(b, x2)
    g = torch.ones_like(y2) / (y2.numel() if reduce == "mean" else 1)
    y2.backward(g.contiguous())
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-15)


def test_row31_expanded_inputs(backend_device):
    b, dev = backend_device
    H, W = 9, 11
    A = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64, device=dev).view(1, 3, 1, 1).expand(4, 3, 1, 1)
    I = _rand(1, 3, H, W, dtype=torch.float64, dev=dev).expand(4, 3, H, W)  # batch stride 0
    t = _rand(1, 1, H, W, dtype=torch.float64, dev=dev, seed=1).expand(4, 1, H, W) * 0.8 + 0.2
    I_before, A_before = I.clone(), A.clone()
    for fn in (lambda I, A, t: F.recover(I, t, A, backend=b), lambda I, A, t: F.synthesize_haze(I, A, t=t, backend=b),
               lambda I, A, t: F.dark_channel(I, 3, backend=b), lambda I, A, t: F.box_filter(I, 2, backend=b)):
        out = fn(I, A, t)
        ref = fn(I.contiguous(), A.contiguous(), t.contiguous())
        assert out.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.equal(I, I_before) and torch.equal(A, A_before)  # nothing written into stride-0 tensors


# ---- row 32: fake (meta) strides equal the real ones -----------------------------------------
_LAYOUT_OPS = {
    "dark_channel": lambda b, x: F.dark_channel(x, 3, backend=b),
    "bright_channel": lambda b, x: F.bright_channel(x, 3, backend=b),
    "box_filter": lambda b, x: F.box_filter(x, 2, backend=b),
    "guided_filter": lambda b, x: F.guided_filter(x, x[:, :1], r=2, eps=1e-3, backend=b),
    "recover": lambda b, x: F.recover(x, x[:, :1] * 0.5 + 0.5, 0.9, backend=b),
    "synthesize_haze": lambda b, x: F.synthesize_haze(x, 0.9, t=x[:, :1] * 0.5 + 0.5, backend=b),
    "recompose_k": lambda b, x: F.recompose_k(x, x, 1.0, backend=b),
    "transmission": lambda b, x: F.transmission(x, 0.9, patch=3, backend=b),
    "difference_perception_weight": lambda b, x: F.difference_perception_weight(x, backend=b),
}  # gather_patches checks its corners' values (data-dependent): not traceable by a FakeTensorMode call


@pytest.mark.parametrize("layout", ["channels_last", "permuted"])
@pytest.mark.parametrize("name", list(_LAYOUT_OPS))
def test_row32_fake_strides_match_real(backend_device, name, layout):
    from torch._subclasses.fake_tensor import FakeTensorMode
    b, dev = backend_device
    if layout == "channels_last":
        x = _rand(1, 3, 16, 16, dev=dev).contiguous(memory_format=torch.channels_last)
    else:
        x = _rand(1, 16, 16, 3, dev=dev).permute(0, 3, 1, 2)
    real = _LAYOUT_OPS[name](b, x)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = _LAYOUT_OPS[name](b, mode.from_tensor(x))
    assert real.shape == fake.shape and real.dtype == fake.dtype
    assert real.stride() == fake.stride(), (real.stride(), fake.stride())


# ---- row 33: identity fast paths never return (a view of) the input --------------------------
_IDENTITY = {
    "box_filter r=0": (lambda b, x: F.box_filter(x, 0, backend=b), (1, 3, 16, 16)),
    "dark_channel patch=1 C=1": (lambda b, x: F.dark_channel(x, 1, backend=b), (1, 1, 16, 16)),
    "bright_channel patch=1 C=1": (lambda b, x: F.bright_channel(x, 1, backend=b), (1, 1, 16, 16)),
    "guided_filter r=0": (lambda b, x: F.guided_filter(x, x, r=0, eps=1e-3, backend=b), (1, 1, 16, 16)),
    "recover t=1": (lambda b, x: F.recover(x, torch.ones_like(x[:, :1]), 0.8, backend=b), (1, 3, 16, 16)),
}


@pytest.mark.parametrize("grad_mode", ["grad", "no_grad"])
@pytest.mark.parametrize("name", list(_IDENTITY))
def test_row33_no_aliasing(backend_device, name, grad_mode):
    b, dev = backend_device
    fn, shape = _IDENTITY[name]
    x = _rand(*shape, dev=dev, grad=grad_mode == "grad")
    with torch.set_grad_enabled(grad_mode == "grad"):
        out = fn(b, x)
    ref = fn("reference", x.detach())
    torch.testing.assert_close(out.detach(), ref, rtol=1e-6, atol=1e-6)
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    before = x.detach().clone()
    out.detach().add_(1)
    assert torch.equal(x.detach(), before)


# ---- row 34: mixed dtypes under autocast -----------------------------------------------------
def test_row34_autocast_contrastive_mixed_dtypes(backend_device):
    b, dev = backend_device
    a = _rand(1, 4, 6, 7, dev=dev, grad=True)
    p = _rand(1, 4, 6, 7, dev=dev, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.contrastive_distance(a.to(torch.bfloat16), p, p.flip(-1)[None], backend=b)
    assert loss.dtype == torch.float32
    ref = F.contrastive_distance(a.detach().to(torch.bfloat16).float(), p, p.flip(-1)[None], backend="reference")
    torch.testing.assert_close(loss.detach(), ref.float(), rtol=1e-2, atol=1e-3)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    # the loss over layers, and the anchor's gradient in the anchor's own dtype
    ab = a.detach().to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total = F.contrastive_loss([ab], [p], [p.flip(-1)[None]], layer_weights=(1.0,), backend=b)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total.detach(), ref.float(), rtol=1e-2, atol=1e-3)
    total.backward()
    assert ab.grad.dtype == torch.bfloat16 and torch.isfinite(ab.grad.float()).all()


def test_row34_autocast_recover_guided_mixed_dtypes(backend_device):
    b, dev = backend_device
    I = _rand(1, 3, 12, 14, dev=dev, grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        J = F.recover(I, I[:, :1].detach().to(torch.bfloat16) * 0.5 + 0.5, torch.tensor(0.8, dtype=torch.bfloat16),
                      backend=b)
        q = F.guided_filter(I.detach().to(torch.bfloat16), I[:, :1], r=2, eps=1e-3, backend=b)
    Jr = F.recover(I.detach(), (I[:, :1].detach().to(torch.bfloat16) * 0.5 + 0.5).float(), 0.8, backend="reference")
    torch.testing.assert_close(J.detach().float(), Jr, rtol=2e-2, atol=2e-2)
    assert torch.isfinite(q.float()).all()
    (J.float().sum() + q.float().sum()).backward()
    assert I.grad is not None and torch.isfinite(I.grad).all()


# ---- row 37: border index maths with negative offsets ----------------------------------------
def test_row37_dark_channel_last_column_zero(backend_device):
    b, dev = backend_device
    x = torch.ones(1, 3, 6, 6, device=dev)
    x[..., :, -1] = 0
    d = F.dark_channel(x, 3, backend=b).cpu()
    torch.testing.assert_close(d, F.dark_channel(x.cpu(), 3, backend="reference"), rtol=0, atol=0)
    assert (d[0, 0, :, 0] == 1).all() and (d[0, 0, :, -2:] == 0).all()


@pytest.mark.parametrize("r", [2, 4])
def test_row37_filter_borders_match_reference(backend_device, r):
    b, dev = backend_device
    x = _rand(1, 3, 5, 7, dtype=torch.float64)
    g = _rand(1, 1, 5, 7, dtype=torch.float64, seed=1)
    torch.testing.assert_close(F.box_filter(x.to(dev), r, backend=b).cpu(), F.box_filter(x, r, backend="reference"),
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(F.guided_filter(g.to(dev), x.to(dev), r=r, eps=1e-3, backend=b).cpu(),
                               F.guided_filter(g, x, r=r, eps=1e-3, backend="reference"), rtol=1e-10, atol=1e-12)


# ---- row 42: out-of-range patch corners ------------------------------------------------------
@pytest.mark.parametrize("corner", [[49, 0], [0, 49], [-1, 0], [0, -1], [64, 64]])
def test_row42_gather_out_of_range_raises(backend_device, corner):
    b, dev = backend_device
    x = _rand(1, 3, 64, 64, dev=dev)
    with pytest.raises((IndexError, ValueError, RuntimeError), match="corner"):
        F.gather_patches(x, torch.tensor([[corner]], device=dev), 16, backend=b)


def test_row42_gather_index_dtypes_and_empty(backend_device):
    b, dev = backend_device
    x = _rand(1, 3, 64, 64, dev=dev)
    c64 = torch.tensor([[[48, 0], [0, 48], [17, 5]]], device=dev)
    out64 = F.gather_patches(x, c64, 16, backend=b)
    out32 = F.gather_patches(x, c64.to(torch.int32), 16, backend=b)
    assert torch.equal(out64, out32)
    assert torch.equal(out64[0, 0], x[0, :, 48:64, 0:16])
    empty = F.gather_patches(x, torch.zeros(1, 0, 2, dtype=torch.int64, device=dev), 16, backend=b)
    assert empty.shape == (1, 0, 3, 16, 16)


# ---- row 43: deterministic backward ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_row43_backward_deterministic_under_flag(backend_device, dtype):
    b, dev = backend_device
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        corners = torch.tensor([[[y, x] for y in range(0, 17, 8) for x in range(0, 17, 8)]], device=dev)  # overlap
        for _ in range(3):
            x = _rand(1, 3, 32, 32, dtype=dtype, dev=dev, grad=True)
            (F.gather_patches(x, corners, 16, backend=b).float().sum()
             + F.dark_channel(x, 15, backend=b).float().sum()
             + F.guided_filter(x, x[:, :1].detach(), r=4, eps=1e-3, backend=b).float().sum()).backward()
            grads.append(x.grad.clone())
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    if dtype == torch.float32:
        x = _rand(1, 3, 32, 32, dtype=torch.float64, grad=True)
        (F.dark_channel(x, 15, backend="reference").sum()
         + F.gather_patches(x, corners.cpu(), 16, backend="reference").sum()
         + F.guided_filter(x, x[:, :1].detach(), r=4, eps=1e-3, backend="reference").sum()).backward()
        torch.testing.assert_close(grads[0].double().cpu(), x.grad, rtol=1e-5, atol=1e-5)
