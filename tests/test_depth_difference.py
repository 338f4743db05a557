"""depth_difference family: difference_perception_weight, depth_difference_loss (SPEC section 5)
and the nn modules, every backend against the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

from fastdehaze import nn as fnn
from fastdehaze import ops
from fastdehaze.ops import depth_difference as dd_ops
from fastdehaze.reference import depth_difference as ref


def _loss_inputs(B, C, H, W, dtype=torch.float64, device="cpu", scale=1.0, grad=(True, True, True, True), seed=0):
    g = torch.Generator().manual_seed(seed)
    dh = (torch.rand(B, C, H, W, generator=g, dtype=torch.float64) * 2 - 1) * scale
    cl = (torch.rand(B, C, H, W, generator=g, dtype=torch.float64) * 2 - 1) * scale
    dp = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    dt = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    return [x.to(device=device, dtype=dtype).requires_grad_(r) for x, r in zip((dh, cl, dp, dt), grad)]


def _grads(out, inputs):
    ins = [x for x in inputs if x.requires_grad]
    return torch.autograd.grad(out, ins)


# ---- values and gradients against the float64 reference ----------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (1, 3, 17, 3), (3, 2, 1, 257)])
@pytest.mark.parametrize("normalize", [False, True])
def test_weight_matches_reference(backend_device, shape, normalize):
    backend, device = backend_device
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    W = ops.difference_perception_weight(x, eps=1e-3, normalize=normalize, backend=backend)
    Wr = ref.difference_perception_weight(x, eps=1e-3, normalize=normalize)
    assert W.shape == (shape[0], 1, shape[2], shape[3]) and W.dtype == torch.float64
    torch.testing.assert_close(W, Wr, rtol=1e-12, atol=1e-14)
    go = torch.randn(W.shape, generator=g, dtype=torch.float64).to(device)
    torch.testing.assert_close(torch.autograd.grad(W, x, go)[0], torch.autograd.grad(Wr, x, go)[0],
                               rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (2, 3, 17, 3), (1, 3, 3, 257)])
@pytest.mark.parametrize("grad", [(True, True, True, True), (True, False, True, False), (False, False, True, False)])
def test_loss_matches_reference(backend_device, shape, grad):
    backend, device = backend_device
    ins = _loss_inputs(*shape, device=device, grad=grad)
    L = ops.depth_difference_loss(*ins, eps=1e-2, backend=backend)
    Lr = ref.depth_difference_loss(*ins, eps=1e-2)
    assert L.shape == () and L.dtype == torch.float64
    torch.testing.assert_close(L, Lr, rtol=1e-12, atol=0)
    for a, b in zip(_grads(L, ins), _grads(Lr, ins)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)


def test_gradcheck(backend_device):
    backend, device = backend_device
    fast = backend == "triton" and device == "cpu"  # the interpreter is slow: one random direction
    x = torch.randn(2, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    for normalize in (False, True):
        assert torch.autograd.gradcheck(
            lambda t: ops.difference_perception_weight(t, 1e-7, normalize, backend=backend), (x,), fast_mode=fast)
    ins = _loss_inputs(2, 2, 2, 3, device=device, seed=3)
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: ops.depth_difference_loss(a, b, c, d, eps=1e-3, backend=backend), tuple(ins),
        fast_mode=fast)


def test_grad_of_clear_is_minus_grad_of_dehazed(backend_device):
    backend, device = backend_device
    ins = _loss_inputs(2, 3, 4, 5, device=device)
    gh, gc, _, _ = _grads(ops.depth_difference_loss(*ins, backend=backend), ins)
    assert gh.abs().max() > 0
    torch.testing.assert_close(gc, -gh)


def test_opcheck(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    ins = [t.detach() for t in _loss_inputs(2, 3, 4, 5, device=device)]
    key = "triton" if backend == "triton" else "native"
    dpw, ddl = dd_ops._dpw.ops()[key], dd_ops._ddl.ops()[key]
    for normalize in (False, True):
        torch.library.opcheck(dpw, (x, 1e-7, normalize))
        torch.library.opcheck(dpw, (x.clone().requires_grad_(), 1e-7, normalize))
    torch.library.opcheck(ddl, (*ins, 1e-7))
    torch.library.opcheck(ddl, (ins[0].clone().requires_grad_(), ins[1], ins[2].clone().requires_grad_(), ins[3], 1e-7))
    torch.library.opcheck(ddl, (*[t.clone().requires_grad_() for t in ins], 1e-7))


def test_both_registered_forms_share_a_schema():
    for name in ("difference_perception_weight", "depth_difference_loss"):
        for suffix in ("", "_backward"):
            native = getattr(torch.ops.fastdehaze, name + suffix).default._schema
            triton = getattr(torch.ops.fastdehaze, name + suffix + "_triton").default._schema
            assert [(a.name, str(a.type)) for a in native.arguments] == [(a.name, str(a.type)) for a in triton.arguments]
            assert [str(r.type) for r in native.returns] == [str(r.type) for r in triton.returns]


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device
    torch._dynamo.reset()

    def f(dh, cl, dp, dt):
        W = ops.difference_perception_weight(dh - cl, normalize=True, backend=backend)
        return ops.depth_difference_loss(dh, cl, dp, dt, backend=backend) + W.mean()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
    ins = _loss_inputs(2, 3, 4, 5, dtype=torch.float32, device=device)
    out, outr = cf(*ins), f(*ins)
    torch.testing.assert_close(out, outr)
    for a, b in zip(_grads(out, ins), _grads(outr, ins)):
        torch.testing.assert_close(a, b)


# ---- the cases of the issue ---------------------------------------------------------------------

def test_zero_difference_gives_uniform_weight(backend_device):
    backend, device = backend_device
    B, C, H, W = 2, 3, 6, 9
    diff = torch.zeros(B, C, H, W, device=device)
    Wt = ops.difference_perception_weight(diff, backend=backend)
    torch.testing.assert_close(Wt, torch.full((B, 1, H, W), 1 / (H * W) + C * 1e-7, device=device), rtol=1e-6, atol=0)
    Wn = ops.difference_perception_weight(diff, normalize=True, backend=backend)
    torch.testing.assert_close(Wn, torch.ones(B, 1, H, W, device=device), rtol=1e-6, atol=0)


def test_scaled_x255_differences_do_not_overflow(backend_device):
    backend, device = backend_device
    ins = _loss_inputs(2, 3, 8, 9, dtype=torch.float32, device=device, scale=255.0)
    W = ops.difference_perception_weight(ins[0] - ins[1], backend=backend)
    assert torch.isfinite(W).all()
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    torch.testing.assert_close(W.double(), ref.difference_perception_weight(ins64[0] - ins64[1]), rtol=1e-4, atol=1e-9)
    L = ops.depth_difference_loss(*ins, backend=backend)
    Lr = ref.depth_difference_loss(*ins64)
    assert torch.isfinite(L)
    torch.testing.assert_close(L.double(), Lr, rtol=1e-5, atol=0)
    for a, b in zip(_grads(L, ins), _grads(Lr, ins64)):
        assert torch.isfinite(a).all()
        # float32 cancellation in P_i (dL/dP_i - sum_j P_j dL/dP_j) where one P is ~1: atol 1e-5
        # of the gradient scale (1/N).
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-5 / 432)


def test_large_image_cpu():
    """B=2 at 3x1023x767 (C++ backend): many softmax chunks and pixel blocks per image."""
    ins = _loss_inputs(2, 3, 1023, 767, dtype=torch.float32)
    L = ops.depth_difference_loss(*ins, backend="cpu")
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    Lr = ref.depth_difference_loss(*ins64)
    torch.testing.assert_close(L.double(), Lr, rtol=1e-5, atol=0)
    for a, b in zip(_grads(L, ins), _grads(Lr, ins64)):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-12)
    W = ops.difference_perception_weight(ins[0].detach() - ins[1].detach(), backend="cpu")
    torch.testing.assert_close(W.double(), ref.difference_perception_weight(ins64[0].detach() - ins64[1].detach()),
                               rtol=1e-5, atol=0)


def test_triton_multi_chunk():
    """Triton with more values than one interpreter block: several chunks merged per image."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ins = _loss_inputs(2, 3, 80, 90, device=device)  # 21600 values per image > 16384
    L = ops.depth_difference_loss(*ins, backend="triton")
    torch.testing.assert_close(L, ref.depth_difference_loss(*ins), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(backend_device, dtype):
    backend, device = backend_device
    ins = _loss_inputs(2, 3, 5, 7, dtype=dtype, device=device)
    L = ops.depth_difference_loss(*ins, backend=backend)
    assert L.dtype == torch.float32
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    Lr = ref.depth_difference_loss(*ins64)
    torch.testing.assert_close(L.double(), Lr, rtol=1e-5, atol=0)
    for a, b in zip(_grads(L, ins), _grads(Lr, ins64)):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=2e-2, atol=1e-5)
    x = torch.randn(2, 3, 5, 7, device=device).to(dtype)
    Wn = ops.difference_perception_weight(x, normalize=True, backend=backend)
    assert Wn.dtype == dtype
    torch.testing.assert_close(Wn.double(), ref.difference_perception_weight(x.double(), normalize=True),
                               rtol=1e-2, atol=1e-2)


def test_autocast_inputs(backend_device):
    """Mixed dtypes as an autocast region produces them: a bf16 network output and depth, fp32
    ground truth and teacher depth. The loss is float32 and gradients reach the network."""
    backend, device = backend_device
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3, padding=1).to(device)
    hazy = torch.rand(2, 3, 6, 7, device=device)
    clear = torch.rand(2, 3, 6, 7, device=device) * 2 - 1
    target = torch.rand(2, 1, 6, 7, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = net(hazy)
        dehazed, depth = out[:, :3], out[:, 3:]
        assert dehazed.dtype == torch.bfloat16
        L = ops.depth_difference_loss(dehazed, clear, depth, target, backend=backend)
    assert L.dtype == torch.float32
    Lr = ref.depth_difference_loss(dehazed.detach().double(), clear.double(), depth.detach().double(), target.double())
    torch.testing.assert_close(L.double(), Lr, rtol=1e-5, atol=0)
    L.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all() and net.weight.grad.abs().sum() > 0


def test_non_contiguous_inputs(backend_device):
    backend, device = backend_device
    g = torch.Generator().manual_seed(5)
    nhwc = torch.randn(2, 6, 7, 3, generator=g, dtype=torch.float64).to(device).permute(0, 3, 1, 2)
    base = torch.randn(2, 3, 6, 14, generator=g, dtype=torch.float64).to(device)[..., ::2]
    cl = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64).to(device).to(memory_format=torch.channels_last)
    dp = torch.randn(2, 7, 6, 1, generator=g, dtype=torch.float64).to(device).permute(0, 3, 2, 1)
    dt = torch.randn(2, 1, 6, 7, generator=g, dtype=torch.float64).to(device)
    for x in (nhwc, base, cl):
        assert not x.is_contiguous()
        torch.testing.assert_close(ops.difference_perception_weight(x, backend=backend),
                                   ref.difference_perception_weight(x.contiguous()), rtol=1e-12, atol=0)
    ins = [nhwc.requires_grad_(), cl.requires_grad_(), dp.requires_grad_(), dt]
    L = ops.depth_difference_loss(*ins, backend=backend)
    Lr = ref.depth_difference_loss(*ins)
    torch.testing.assert_close(L, Lr, rtol=1e-12, atol=0)
    for a, b in zip(_grads(L, ins), _grads(Lr, ins)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)


def test_batch_zero(backend_device):
    backend, device = backend_device
    x = torch.zeros(0, 3, 4, 5, device=device, requires_grad=True)
    W = ops.difference_perception_weight(x, backend=backend)
    assert W.shape == (0, 1, 4, 5)
    W.sum().backward()
    assert x.grad.shape == x.shape
    ins = _loss_inputs(0, 3, 4, 5, dtype=torch.float32, device=device)
    L = ops.depth_difference_loss(*ins, backend=backend)
    assert L.shape == () and torch.isnan(L) and torch.isnan(ref.depth_difference_loss(*ins))
    gs = _grads(L, ins)
    assert all(g.shape == x.shape for g, x in zip(gs, ins))


def test_nan_makes_that_image_nan(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    x[0, 1, 2, 3] = float("nan")
    W = ops.difference_perception_weight(x, backend=backend)
    assert torch.isnan(W[0]).all()
    torch.testing.assert_close(W[1], ref.difference_perception_weight(x[1:])[0], rtol=1e-12, atol=0)
    ins = _loss_inputs(2, 3, 4, 5, device=device, grad=(False,) * 4)
    ins[0][1, 0, 0, 0] = float("nan")
    assert torch.isnan(ops.depth_difference_loss(*ins, backend=backend))


def test_bad_input():
    x = torch.rand(2, 3, 4, 5)
    d = torch.rand(2, 1, 4, 5)
    with pytest.raises(ValueError, match="clear"):
        ops.depth_difference_loss(x, torch.rand(2, 3, 4, 6), d, d)
    with pytest.raises(ValueError, match="depth_pred"):
        ops.depth_difference_loss(x, x, torch.rand(2, 3, 4, 5), d)
    with pytest.raises(ValueError, match="depth_pred"):
        ops.depth_difference_loss(x, x, torch.rand(2, 1, 5, 4), d)
    with pytest.raises(ValueError, match="depth_target"):
        ops.depth_difference_loss(x, x, d, torch.rand(1, 1, 4, 5))
    with pytest.raises(ValueError, match="dehazed"):
        ops.depth_difference_loss(torch.rand(3, 4, 5), x, d, d)
    with pytest.raises(TypeError, match="clear"):
        ops.depth_difference_loss(x, (x * 255).to(torch.uint8), d, d)
    with pytest.raises(TypeError, match="depth_target"):
        ops.depth_difference_loss(x, x, d, d.numpy())
    with pytest.raises(ValueError, match="eps"):
        ops.depth_difference_loss(x, x, d, d, eps=-1.0)
    with pytest.raises(TypeError, match="diff"):
        ops.difference_perception_weight(torch.ones(1, 1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="diff"):
        ops.difference_perception_weight(torch.rand(3, 4, 5))
    with pytest.raises(TypeError, match="normalize"):
        ops.difference_perception_weight(x, normalize=1)
    with pytest.raises(ValueError, match="eps"):
        ops.difference_perception_weight(x, eps=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        ops.difference_perception_weight(x, backend="gpu")


# ---- modules ------------------------------------------------------------------------------------

def _dcmpnet_depth_loss(dehaze_output_img, target_img, dehaze_output_img_2_depth_img, real_img_2_depth_img):
    """DCMPNet train.py's depth loss, transcribed (zhoushen1/DCMPNet, train.py, train())."""
    criterion_depth = torch.nn.L1Loss()
    diff_dehaze = torch.sub(dehaze_output_img, target_img)
    B, C, H, W = diff_dehaze.shape
    diff_dehaze = diff_dehaze.permute(0, 2, 3, 1)
    diff_dehaze = diff_dehaze.reshape(-1, C * H * W)
    epsilon = 1e-7
    diff_d_w = F.softmax(diff_dehaze, dim=-1) + epsilon
    diff_d_w = diff_d_w.reshape(B, H, W, C).permute(0, 3, 1, 2)
    diff_dehaze_w = torch.sum(diff_d_w, dim=1, keepdim=True)
    weighted_depth_output_img = torch.mul(dehaze_output_img_2_depth_img, diff_dehaze_w)
    weighted_real_img_2_depth_img = torch.mul(real_img_2_depth_img, diff_dehaze_w)
    loss_depth_consis = criterion_depth(weighted_depth_output_img, weighted_real_img_2_depth_img)
    loss_depth_consis_w = criterion_depth(dehaze_output_img_2_depth_img, real_img_2_depth_img)
    return loss_depth_consis + loss_depth_consis_w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_difference_perception_loss_parity_with_dcmpnet(dtype):
    ins = _loss_inputs(2, 3, 16, 12, dtype=dtype, grad=(True, False, True, False))  # images in [-1, 1]
    ins[3] = ins[3].detach() * 10  # a disparity-like teacher output
    L = fnn.DifferencePerceptionLoss()(*ins)
    Le = _dcmpnet_depth_loss(*ins)
    tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=1e-5, atol=0)
    torch.testing.assert_close(L, Le, **tol)
    for a, b in zip(_grads(L, ins), _grads(Le, ins)):
        torch.testing.assert_close(a, b, **({"rtol": 1e-10, "atol": 1e-15} if dtype == torch.float64 else
                                            {"rtol": 1e-4, "atol": 1e-9}))


def test_dcmpnet_loss_terms():
    ins = _loss_inputs(2, 3, 8, 8, dtype=torch.float64, grad=(True, False, True, False))
    hazy = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    calls = []

    def contrast(a, p, n):
        calls.append((a, p, n))
        return (a - p).abs().mean() / ((a - n).abs().mean() + 1e-7)

    m = fnn.DCMPNetLoss(contrast_loss=contrast)
    out = m(ins[0], ins[1], hazy, ins[2], ins[3])
    expect = F.l1_loss(ins[0], ins[1]) + 0.1 * F.l1_loss(ins[2], ins[3]) + contrast(ins[0], ins[1], hazy)
    torch.testing.assert_close(out.dehaze, expect)
    torch.testing.assert_close(out.depth, _dcmpnet_depth_loss(*ins))
    assert calls[0][2] is hazy
    no_cr = fnn.DCMPNetLoss(contrast_weight=0.0)(ins[0], ins[1], hazy, ins[2], ins[3])
    torch.testing.assert_close(no_cr.dehaze, F.l1_loss(ins[0], ins[1]) + 0.1 * F.l1_loss(ins[2], ins[3]))


def test_depth_difference_attention(backend_device):
    backend, device = backend_device
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=g).to(device)
    y = torch.randn(2, 3, 8, 8, generator=g).to(device)
    feat = torch.randn(2, 5, 4, 4, generator=g).to(device).requires_grad_()
    att = fnn.DepthDifferenceAttention(mode="area", backend=backend)
    with torch.no_grad():  # usable at inference
        out = att(x, y, feat)
    W = ref.difference_perception_weight(x - y, normalize=True)
    torch.testing.assert_close(out, feat * F.avg_pool2d(W, 2), rtol=1e-5, atol=1e-6)
    same = fnn.DepthDifferenceAttention(backend=backend)(x, y, torch.ones(2, 1, 8, 8, device=device))
    torch.testing.assert_close(same.mean(dim=(1, 2, 3)), torch.ones(2, device=device), rtol=1e-5, atol=0)
    xr = x.clone().requires_grad_()
    fnn.DepthDifferenceAttention(backend=backend)(xr, y, feat).sum().backward()
    assert xr.grad is not None and feat.grad is not None
    with pytest.raises(ValueError, match="y"):
        att(x, y[:, :2], feat)
    with pytest.raises(ValueError, match="feat"):
        att(x, y, feat[:1])
