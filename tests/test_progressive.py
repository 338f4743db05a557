"""PreRestoreModule / ProgressiveDehazer / tiled_forward (issue 9 item 2).

A user's own two-layer conv net (written here) is the base in most tests; the built-in bases
(fastdehaze.nn.AODNet / UNet) are added when they exist, skipped with a reason otherwise.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fastdehaze import ops
import fastdehaze.nn as fnn
from fastdehaze.nn import PreRestoreModule, ProgressiveDehazer, ProgressiveOutput, tiled_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TwoLayer(nn.Module):
    """A user's base: two convolutions, residual, [B,3,H,W] -> [B,3,H,W]."""

    def __init__(self, width=8):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + self.c2(torch.relu(self.c1(x)))


class Needs8(TwoLayer):
    """A base that only takes multiples of 8 (declares pad_multiple = 8)."""
    pad_multiple = 8

    def forward(self, x):
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise RuntimeError(f"size {tuple(x.shape)} not a multiple of 8")
        return super().forward(x)


def _builtin_bases():
    out = []
    for name in ("AODNet", "UNet"):
        cls = getattr(fnn, name, None)
        out.append(pytest.param(cls, id=name, marks=pytest.mark.skipif(
            cls is None, reason=f"fastdehaze.nn.{name} not committed yet (issue 9 item 3)")))
    return out


def _small_prm(**kw):
    # small DCP prior so that tiles are small in the tests (receptive field 4*(9+1)+7+32-1 = 78)
    args = dict(patch=7, r=8, width=8, layers=3, scale=4)
    args.update(kw)
    return PreRestoreModule(**args)


def _img(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


def _hazy(B, H, W, seed=0):
    """A smooth-ish synthetic hazy image (not flat noise: DCP and the nets see structure)."""
    g = torch.Generator().manual_seed(seed)
    J = torch.nn.functional.interpolate(torch.rand(B, 3, H // 8 + 2, W // 8 + 2, generator=g), size=(H, W),
                                        mode="bilinear", align_corners=False)
    t = torch.nn.functional.interpolate(0.3 + 0.7 * torch.rand(B, 1, H // 16 + 2, W // 16 + 2, generator=g),
                                        size=(H, W), mode="bilinear", align_corners=False)
    return (J * t + 0.9 * (1 - t)).clamp(0, 1)


# ---- shapes and return types --------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
def test_shapes_and_return_types(train):
    m = ProgressiveDehazer(TwoLayer(), _small_prm())
    m.train(train)
    I = _hazy(2, 40, 56)
    J = m(I)
    assert isinstance(J, torch.Tensor) and not isinstance(J, tuple) and J.shape == I.shape
    out = m(I, return_j0=True)
    assert isinstance(out, ProgressiveOutput)
    assert out.J.shape == I.shape and out.J0.shape == I.shape
    J0, t, A = m.prm(I, return_all=True)
    assert J0.shape == I.shape and t.shape == (2, 1, 40, 56) and A.shape == (2, 3, 1, 1)
    assert m.value_range == (0.0, 1.0) and m.prm.value_range == (0.0, 1.0)


def test_default_prm_and_config_round_trip():
    m = ProgressiveDehazer(TwoLayer())
    assert isinstance(m.prm, PreRestoreModule)
    prm = m.prm
    assert PreRestoreModule(**prm.config()).config() == prm.config()
    cfg = m.config()
    assert cfg["prm"] == {"name": "PreRestoreModule", "args": prm.config()}
    assert cfg["base"]["name"].endswith(":TwoLayer")
    import json
    json.dumps(cfg)
    with pytest.raises(ValueError, match="trust_code"):
        ProgressiveDehazer(**cfg)
    m2 = ProgressiveDehazer(**cfg, trust_code=True)
    assert type(m2.base).__name__ == "TwoLayer" and m2.config() == cfg
    m2.load_state_dict(m.state_dict())
    I = _hazy(1, 24, 24)
    torch.testing.assert_close(m2(I), m(I), rtol=0, atol=0)


def test_prm_dcp_params_are_constructor_args():
    prm = PreRestoreModule(patch=9, omega=0.8, top=0.01, r=20, eps=1e-2, t0=0.2, subsample=2)
    I = _hazy(1, 64, 64)
    t_dcp = prm.dcp_transmission(I, prm.global_context(I)["A_dcp"])
    assert float(t_dcp.min()) >= 0.2 - 1e-6
    # the prior reacts to each argument
    base = PreRestoreModule()
    assert not torch.allclose(t_dcp, base.dcp_transmission(I, base.global_context(I)["A_dcp"]))


@pytest.mark.parametrize("kw, match", [
    (dict(patch=4), "patch"), (dict(patch=0), "patch"), (dict(omega=1.5), "omega"), (dict(top=-0.1), "top"),
    (dict(r=-1), "r"), (dict(eps=0.0), "eps"), (dict(t0=0.0), "t0"), (dict(subsample=0), "subsample"),
    (dict(width=0), "width"), (dict(layers=1), "layers"), (dict(scale=0), "scale"),
    (dict(learn_A=1), "learn_A"), (dict(backend="gpu"), "backend")])
def test_prm_bad_args(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        PreRestoreModule(**kw)


def test_bad_input():
    m = ProgressiveDehazer(TwoLayer(), _small_prm())
    with pytest.raises(TypeError, match="I must be a torch.Tensor"):
        m([1, 2, 3])
    with pytest.raises(TypeError, match="I must be a floating"):
        m(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"I must be \[B,3,H,W\]"):
        m(torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="return_j0"):
        m(torch.rand(1, 3, 8, 8), return_j0=1)
    with pytest.raises(TypeError, match=r"I is torch.float16 but the model's parameters are torch.float32"):
        m(torch.rand(1, 3, 8, 8).half())
    with pytest.raises(ValueError, match="base_input"):
        ProgressiveDehazer(TwoLayer(), base_input="both")
    with pytest.raises(TypeError, match="base must be"):
        ProgressiveDehazer(42)
    with pytest.raises(ValueError, match="unknown architecture"):
        ProgressiveDehazer({"name": "NoSuchNet", "args": {}})


# ---- J0 at initialisation -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_j0_equals_fused_dcp_at_init(dtype, atol):
    I = _hazy(2, 45, 61).to(dtype)
    prm = PreRestoreModule().to(dtype)
    J0, t, A = prm(I, return_all=True)
    Jd, td, Ad = ops.dehaze_dcp(I, return_all=True)
    torch.testing.assert_close(A, Ad, rtol=0, atol=atol)
    torch.testing.assert_close(t, td, rtol=0, atol=atol)
    torch.testing.assert_close(J0, Jd, rtol=0, atol=atol)
    # and with the guided-filter / omega / t0 of a non-default prior
    prm2 = PreRestoreModule(patch=7, omega=0.8, r=10, t0=0.2).to(dtype)
    torch.testing.assert_close(prm2(I), ops.dehaze_dcp(I, 7, 0.8, 0.001, 10, 1e-3, 0.2), rtol=0, atol=atol)


def test_prm_correction_changes_t_and_A():
    """The learned parts are live: non-zero last layers move t and A away from the DCP's."""
    prm = _small_prm()
    I = _hazy(1, 32, 32)
    with torch.no_grad():
        J0a, ta, Aa = prm(I, return_all=True)
    with torch.no_grad():
        prm.local[-1].bias.fill_(0.3)
        prm.head[2].bias.copy_(torch.tensor([-0.1, 0.0, 0.1, 0.0]))
    with torch.no_grad():
        J0b, tb, Ab = prm(I, return_all=True)
    assert bool((tb <= ta + 1e-7).all()) and float((ta - tb).abs().max()) > 1e-3  # exponent > 1: t smaller
    torch.testing.assert_close(Ab.flatten(), Aa.flatten() * torch.exp(torch.tensor([-0.1, 0.0, 0.1])))


# ---- gradients ----------------------------------------------------------------------------------

def _train_two_steps(m, I, target):
    """Zero-initialised last layers have no gradient upstream at step 0, so take one step first,
    then check the gradient of every trainable parameter on the second."""
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        out = m(I, return_j0=True)
        loss = (out.J - target).abs().mean() + (out.J0 - target).abs().mean()
        loss.backward()
        losses.append(float(loss))
        if _ == 0:
            opt.step()
    return losses


def _assert_all_grads(m):
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or float(p.grad.abs().sum()) == 0)]
    assert not missing, f"no gradient reached: {missing}"


@pytest.mark.parametrize("base_input", ["j0", "i_j0"])
def test_gradients_reach_prm_and_user_base(base_input):
    torch.manual_seed(0)
    m = ProgressiveDehazer(TwoLayer(), _small_prm(), base_input=base_input)
    I = _hazy(2, 32, 40, seed=1)
    target = _hazy(2, 32, 40, seed=2)
    _train_two_steps(m, I, target)
    _assert_all_grads(m)


@pytest.mark.parametrize("cls", _builtin_bases())
def test_gradients_reach_prm_and_builtin_base(cls):
    torch.manual_seed(0)
    m = ProgressiveDehazer(cls(), _small_prm())
    I = _hazy(2, 32, 40, seed=1)
    target = _hazy(2, 32, 40, seed=2)
    _train_two_steps(m, I, target)
    _assert_all_grads(m)


def test_user_base_trains():
    """A few Adam steps on one pair lower the loss (the framework trains end to end)."""
    torch.manual_seed(0)
    m = ProgressiveDehazer(TwoLayer(), _small_prm())
    I = _hazy(2, 32, 32, seed=3)
    target = _hazy(2, 32, 32, seed=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        out = m(I, return_j0=True)
        loss = (out.J - target).abs().mean() + (out.J0 - target).abs().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0], losses


def test_gradient_flows_into_t_and_A():
    prm = _small_prm()
    I = _hazy(1, 24, 24)
    ctx = prm.global_context(I)
    J0, t, A = prm(I, context=ctx, return_all=True)
    t.retain_grad()
    A.retain_grad()
    J0.sum().backward()
    assert t.grad is not None and float(t.grad.abs().sum()) > 0
    assert A.grad is not None and float(A.grad.abs().sum()) > 0


# ---- sizes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("H, W", [(17, 33), (461, 619), (1, 1), (3, 2)])
def test_odd_sizes(H, W):
    bases = [TwoLayer()] + [getattr(fnn, n)() for n in ("AODNet", "UNet") if hasattr(fnn, n)]
    I = _hazy(1, max(H, 16), max(W, 16))[..., :H, :W].contiguous()
    for base in bases:
        m = ProgressiveDehazer(base).eval()
        with torch.no_grad():
            out = m(I, return_j0=True)
        assert out.J.shape == I.shape and out.J0.shape == I.shape
        assert bool(torch.isfinite(out.J).all()) and bool(torch.isfinite(out.J0).all())
    if H * W > 1:
        torch.testing.assert_close(out.J0, ops.dehaze_dcp(I), rtol=0, atol=1e-5)


def test_pad_multiple_base_padded_and_cropped():
    torch.manual_seed(0)
    base = Needs8()
    m = ProgressiveDehazer(base, _small_prm())
    assert m.pad_multiple == 8  # lcm(4, 8)
    I = _hazy(1, 17, 33)
    with torch.no_grad():
        out = m(I, return_j0=True)
        assert out.J.shape == I.shape
        # the base ran on J0 reflect-padded to 24 x 40 and was cropped back
        padded = torch.nn.functional.pad(out.J0, (0, 7, 0, 7), mode="reflect")
        torch.testing.assert_close(out.J, base(padded)[..., :17, :33], rtol=0, atol=0)
        # a side too short to reflect (1 pixel) is replicated
        I1 = _hazy(1, 16, 16)[..., :1, :5]
        assert m(I1).shape == I1.shape
    with pytest.raises(RuntimeError, match="multiple of 8"):
        base(torch.rand(1, 3, 17, 33))  # the guard itself works


def test_receptive_field():
    prm = PreRestoreModule(patch=15, r=60, layers=4, scale=4)
    assert prm.dilations == [1, 2, 4, 1]
    assert prm.receptive_field == 4 * (1 + 2 * 8 + 1) + 15 + 240 - 1
    m = ProgressiveDehazer(TwoLayer(), prm)
    assert m.receptive_field == prm.receptive_field + 5 - 1  # two 3x3 convs


# ---- tiles ---------------------------------------------------------------------------------------

def _perturbed(m):
    """Non-zero last layers, so that the learned corrections take part in the tiled test."""
    with torch.no_grad():
        for p in m.prm.local[-1].parameters():
            p.normal_(0, 0.3)
        m.prm.head[2].weight.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("base_factory", [pytest.param(TwoLayer, id="user"), pytest.param(Needs8, id="pad8")]
                         + _builtin_bases())
def test_tiled_equals_untiled(base_factory):
    torch.manual_seed(0)
    m = _perturbed(ProgressiveDehazer(base_factory(), _small_prm())).eval()
    I = _hazy(1, 150, 190, seed=5)
    calls = []
    with torch.no_grad():
        full = m(I)
        tiled = tiled_forward(m, I, tile=64, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (9, 9)  # 3 x 3 tiles, at least 4
    assert m.receptive_field // 2 + 1 < 150  # the halo is smaller than the image: tiles are real tiles
    assert float((tiled - full).abs().max()) <= 1 / 255


def test_tiled_equals_untiled_default_prior():
    """The default DCP prior (patch 15, r 60: receptive field 330) on a photo-sized image."""
    m = _perturbed(ProgressiveDehazer(TwoLayer())).eval()
    I = _hazy(1, 461, 619, seed=6)
    n = []
    with torch.no_grad():
        full = m(I)
        tiled = tiled_forward(m, I, tile=200, progress=lambda d, t: n.append(t))
    assert n[-1] >= 4
    assert float((tiled - full).abs().max()) <= 1 / 255


def test_tiled_without_halo_differs():
    """The test above can fail: with no halo the tiles see a different A-free local context."""
    m = _perturbed(ProgressiveDehazer(TwoLayer(), _small_prm())).eval()
    I = _hazy(1, 150, 190, seed=5)
    with torch.no_grad():
        full = m(I)
        tiled = tiled_forward(m, I, tile=64, halo=0)
    assert float((tiled - full).abs().max()) > 1 / 255


def test_tiled_forward_generic_model_and_args():
    conv = nn.Conv2d(3, 2, 5, padding=2)  # no global_context, no attributes: halo must be given
    I = _img(1, 3, 40, 50)
    with torch.no_grad():
        torch.testing.assert_close(tiled_forward(conv, I, 16, halo=3), conv(I))
    with pytest.raises(ValueError, match="halo"):
        tiled_forward(conv, I, 16)
    with pytest.raises(ValueError, match="tile"):
        tiled_forward(conv, I, 0, halo=3)


# ---- torch.compile -------------------------------------------------------------------------------

_COMPILE_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(2)
    import fastdehaze.nn as fnn
    from fastdehaze.nn import ProgressiveDehazer, PreRestoreModule
    torch.manual_seed(0)
    name = sys.argv[1]
    if name == "tiny":
        base = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 3, 3, padding=1))
    else:
        base = getattr(fnn, name)()
    m = ProgressiveDehazer(base, PreRestoreModule(patch=7, r=8, width=8, layers=3))
    with torch.no_grad():
        m.prm.local[-1].weight.normal_(0, 0.1)
    cm = torch.compile(m, fullgraph=True)
    I = torch.rand(2, 3, 32, 48)
    J, J0 = cm(I, return_j0=True)          # compiled before any eager call
    (J.square().mean() + J0.mean()).backward()
    g = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    J2, J02 = m(I, return_j0=True)
    (J2.square().mean() + J02.mean()).backward()
    torch.testing.assert_close(J, J2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(J0, J02, rtol=1e-5, atol=1e-6)
    for n, p in m.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g[n], p.grad, rtol=1e-4, atol=1e-6)
    print("COMPILED_OK", len(g))
""")


@pytest.mark.parametrize("name", ["tiny"] + [pytest.param(n, marks=pytest.mark.skipif(
    not hasattr(fnn, n), reason=f"fastdehaze.nn.{n} not committed yet")) for n in ("UNet", "AODNet")])
def test_compile_fullgraph_fresh_process(name):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, name], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "COMPILED_OK" in r.stdout, r.stdout[-3000:] + r.stderr[-6000:]


# ---- the U-Net correction, rich features, white A prior (the shipped model's PRM) --------------

_UNET_PRM = dict(patch=7, r=8, local="unet", levels=1, width=8, features="rich", A_prior="white", scale=4)


def _randomised_prm(prm, std=0.2, seed=0):
    """The PRM with its zero-initialised output layers randomised (so the correction is not 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (prm.local.out if prm.local_kind == "unet" else prm.local[-1], prm.head[2]):
            for p in m.parameters():
                p.copy_(std * torch.randn(p.shape, generator=g))
    return prm


def test_unet_prm_starts_at_the_dcp_with_a_white_A():
    """At initialisation J0 = recover(I, t_dcp(I, A = 1), A = 1): the DCP computed against a white
    atmospheric light (float64 reference pipeline)."""
    from fastdehaze import ops
    prm = PreRestoreModule(**_UNET_PRM).double()
    I = _hazy(2, 40, 56).double()
    one = torch.ones(2, 3, 1, 1, dtype=torch.float64)
    t_raw = ops.transmission(I, one, prm.omega, prm.patch, backend="reference")
    luma = 0.299 * I[:, 0:1] + 0.587 * I[:, 1:2] + 0.114 * I[:, 2:3]
    t = ops.guided_filter(luma, t_raw, prm.r, prm.eps, backend="reference").clamp(prm.t0, 1)
    expect = ops.recover(I, t, one, prm.t0, backend="reference").clamp(0, 1)
    torch.testing.assert_close(prm(I), expect, rtol=0, atol=1e-10)
    # the default A prior is the DCP's estimate: another output
    dcp = PreRestoreModule(**{**_UNET_PRM, "A_prior": "dcp"}).double()
    assert not torch.allclose(dcp(I), expect)


def test_unet_prm_config_round_trip_and_gradients():
    prm = _randomised_prm(PreRestoreModule(**_UNET_PRM))
    assert PreRestoreModule(**prm.config()).config() == prm.config()
    I = _hazy(2, 37, 53)
    J0 = prm(I)
    J0.square().mean().backward()
    _assert_all_grads(prm)
    assert prm.pad_multiple == 8


@pytest.mark.parametrize("H, W", [(1, 1), (3, 17), (17, 3), (65, 40)])
def test_unet_prm_odd_sizes(H, W):
    prm = _randomised_prm(PreRestoreModule(**_UNET_PRM))
    J0 = prm(_hazy(1, max(H, 16), max(W, 16))[..., :H, :W])
    assert J0.shape == (1, 3, H, W) and torch.isfinite(J0).all()


def test_unet_prm_receptive_field_bounds_the_dependence():
    """An output pixel does not depend on inputs farther than receptive_field // 2 (gradient probe)."""
    prm = _randomised_prm(PreRestoreModule(**{**_UNET_PRM, "patch": 3, "r": 2}), seed=1).double()
    rf = prm.receptive_field
    S = rf + 64
    I = _hazy(1, S, S).double().requires_grad_(True)
    ctx = {k: v.detach() for k, v in prm.global_context(I.detach()).items()}   # global parts fixed
    c = S // 2
    prm(I, context=ctx)[0, :, c, c].sum().backward()
    ys, xs = torch.nonzero(I.grad[0].abs().sum(0) > 0, as_tuple=True)
    reach = max(int((ys - c).abs().max()), int((xs - c).abs().max()))
    assert 0 < reach <= rf // 2, (reach, rf)


def test_unet_prm_tiled_equals_untiled():
    prm = _randomised_prm(PreRestoreModule(**_UNET_PRM))
    I = _hazy(1, 100, 140)
    full = prm(I)
    tiled = tiled_forward(prm, I, 48)
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw, match", [(dict(local="mlp"), "local"), (dict(features="all"), "features"),
                                       (dict(A_prior="grey"), "A_prior"), (dict(local="unet", levels=0), "levels"),
                                       (dict(local="dilated", levels=2), "levels applies to local='unet' only"),
                                       (dict(local="unet", layers=6), "layers applies to local='dilated' only")])
def test_unet_prm_bad_args(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        PreRestoreModule(**kw)


def test_unet_zero_init_is_the_identity():
    base = fnn.UNet(width=4, levels=1, zero_init=True)
    I = _hazy(1, 30, 30)
    torch.testing.assert_close(base(I), I, rtol=0, atol=0)
    assert fnn.UNet(**base.config()).config() == base.config()
    with pytest.raises(TypeError, match="zero_init"):
        fnn.UNet(zero_init=1)


def test_unet_sizes_are_bounded():
    """A width/levels pair whose coarsest channels would need gigabytes is refused, naming both."""
    with pytest.raises(ValueError, match="width.*levels"):
        PreRestoreModule(local="unet", width=8, levels=12)
    with pytest.raises(ValueError, match="width.*levels"):
        fnn.UNet(width=16, levels=10)
