"""Built-in bases (issue 9 items 3 and 9): AODNet and UNet shapes for odd sizes, gradients to
every parameter, the receptive-field claim measured, config rebuild, channels_last, autocast,
the documented parameter / MAC counts, and the registry."""
import pytest
import torch

from fastdehaze.nn import ARCHITECTURES, AODNet, UNet
from fastdehaze.nn.bases import model_stats, register_architecture

BASES = [AODNet, UNet]


def _x(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def measured_radius(model, N=240, points=((120, 120), (121, 121), (121, 120), (123, 119), (124, 124), (127, 125))):
    """Largest per-side distance from a perturbed input pixel to an output pixel that changed.
    Weights made positive first (no dead ReLU hides a path), float64, clamping off."""
    m = type(model)(**{**model.config(), "clamp": False}).double()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    x = _x(1, 3, N, N, dtype=torch.float64)
    r = 0
    with torch.no_grad():
        y0 = m(x)
        for (i, j) in points:
            x1 = x.clone()
            x1[0, :, i, j] += 0.25
            nz = ((m(x1) - y0).abs().amax(1)[0] > 0).nonzero()
            assert len(nz), "the perturbed pixel changed nothing"
            r = max(r, int((nz[:, 0] - i).abs().max()), int((nz[:, 1] - j).abs().max()))
    return r


@pytest.mark.parametrize("cls", BASES)
def test_constructs_without_arguments_and_registered(cls):
    m = cls()
    assert ARCHITECTURES[cls.__name__] is cls
    assert m.value_range == (0.0, 1.0) and m.global_context(_x(1, 3, 8, 8)) == {}
    assert isinstance(m.receptive_field, int) and isinstance(m.pad_multiple, int)
    assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())


@pytest.mark.parametrize("cls", BASES)
def test_odd_sizes(cls):
    m = cls().eval()
    with torch.no_grad():
        for shape in [(2, 3, 17, 33), (1, 3, 1, 1), (1, 3, 3, 2), (1, 3, 257, 3), (0, 3, 9, 9)]:
            y = m(_x(*shape))
            assert y.shape == shape and y.dtype == torch.float32
            assert y.numel() == 0 or (y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all())
        y = m(_x(1, 3, 461, 619))
        assert y.shape == (1, 3, 461, 619)


@pytest.mark.parametrize("cls", BASES)
def test_bad_input(cls):
    m = cls()
    with pytest.raises(ValueError, match="I must be"):
        m(_x(1, 4, 8, 8))
    with pytest.raises(ValueError, match="I must be"):
        m(_x(3, 8, 8))
    with pytest.raises(ValueError, match="I must have H, W >= 1"):
        m(_x(1, 3, 0, 8))
    with pytest.raises(TypeError, match="I must be"):
        m(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="I must be"):
        m([1.0])
    with pytest.raises(TypeError, match=r"I is torch.float64 but the model's parameters are torch.float32"):
        m(_x(1, 3, 8, 8).double())
    assert m.double()(_x(1, 3, 8, 8).double()).dtype == torch.float64


def test_bad_construction():
    with pytest.raises(ValueError, match="width"):
        UNet(width=0)
    with pytest.raises(TypeError, match="levels"):
        UNet(levels=1.5)
    with pytest.raises(ValueError, match="blocks"):
        UNet(blocks=0)
    with pytest.raises(ValueError, match="b must be"):
        AODNet(b=float("nan"))


@pytest.mark.parametrize("cls", BASES)
def test_gradients_reach_every_parameter(cls):
    torch.manual_seed(0)
    m = cls(clamp=False)
    I = _x(2, 3, 19, 23, seed=1).requires_grad_(True)
    loss = (m(I) - _x(2, 3, 19, 23, seed=2)).abs().mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert I.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_aodnet_float64_gradcheck_and_kform(backend):
    torch.manual_seed(0)
    m = AODNet(clamp=False, backend=backend).double()
    I = _x(1, 3, 5, 6, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: m(x), (I,), eps=1e-6, atol=1e-6)
    # J = relu(K I - K + 1) with K from the five convolutions (written out here)
    import torch.nn.functional as F
    with torch.no_grad():
        x1 = F.relu(m.conv1(I))
        x2 = F.relu(m.conv2(x1))
        x3 = F.relu(m.conv3(torch.cat((x1, x2), 1)))
        x4 = F.relu(m.conv4(torch.cat((x2, x3), 1)))
        K = F.relu(m.conv5(torch.cat((x1, x2, x3, x4), 1)))
        torch.testing.assert_close(m(I), F.relu(K * I - K + 1.0), rtol=1e-12, atol=1e-12)


def test_aodnet_fused_matches_reference_backend():
    torch.manual_seed(0)
    m, m2 = AODNet(backend="cpu"), AODNet(backend="reference")
    m2.load_state_dict(m.state_dict())
    x = _x(2, 3, 21, 30)
    torch.testing.assert_close(m(x), m2(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", BASES)
def test_receptive_field_measured(cls):
    m = cls()
    r = measured_radius(m)
    assert r <= m.receptive_field // 2, (r, m.receptive_field)  # never under-stated (tiles rely on it)
    assert m.receptive_field <= 2 * (2 * r + 1), (r, m.receptive_field)  # not over-stated by > 2x


def test_unet_receptive_field_other_configs():
    for kw in ({"levels": 1}, {"levels": 2, "blocks": 2}, {"levels": 0}):
        m = UNet(width=4, **kw)
        r = measured_radius(m, N=160, points=((80, 80), (81, 81), (83, 82)))
        assert r <= m.receptive_field // 2 and m.receptive_field <= 2 * (2 * r + 1), (kw, r)


@pytest.mark.parametrize("cls", BASES)
def test_config_rebuild(cls):
    m = cls()
    m2 = type(m)(**m.config())
    assert m2.state_dict().keys() == m.state_dict().keys()
    assert all(m2.state_dict()[k].shape == v.shape for k, v in m.state_dict().items())
    import json
    assert json.loads(json.dumps(m.config())) == m.config()
    m3 = UNet(width=8, levels=2, blocks=2)
    assert UNet(**m3.config()).config() == m3.config() and m3.pad_multiple == 4


@pytest.mark.parametrize("cls", BASES)
def test_channels_last_and_noncontiguous(cls):
    m = cls().eval()
    x = _x(2, 3, 18, 27)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x.transpose(2, 3).contiguous().transpose(2, 3)), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", BASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(cls, dtype):
    m = cls().eval()
    x = _x(1, 3, 17, 19)
    with torch.no_grad():
        y = m(x)
        with torch.autocast("cpu", dtype=dtype):
            ya = m(x)
    assert ya.dtype == torch.float32  # the convolutions run in dtype; the output is in I's dtype
    torch.testing.assert_close(ya, y, rtol=0, atol=5e-2)


@pytest.mark.parametrize("cls,params,macs,doc_macs", [(AODNet, 1761, 1.746e9, "1.746 GMAC"),
                                                       (UNet, 322243, 32.224e9, "32.22 GMAC")])
def test_documented_sizes(cls, params, macs, doc_macs):
    st = model_stats(cls())
    assert st["params"] == params and abs(st["macs_per_mp"] - macs) / macs < 1e-3
    doc = " ".join(cls.__doc__.split())
    assert f"{params:,} parameters" in doc and doc_macs in doc
    assert f"receptive field {cls().receptive_field} pixels" in doc


def test_register_architecture_refuses_a_clash():
    class AODNet:  # noqa: F811 - another class of the same name
        pass
    with pytest.raises(ValueError, match="already registered"):
        register_architecture(AODNet)
    assert ARCHITECTURES["AODNet"].__module__ == "fastdehaze.nn.bases"


def test_unet_pads_by_reflection():
    # the padded bottom/right rows are reflections, so the output near the border does not see
    # a constant frame: a U-Net of one level over a 9x9 image equals the one over the manually
    # reflected 10x10 input, cropped
    import torch.nn.functional as F
    torch.manual_seed(0)
    m = UNet(width=4, levels=1).eval()
    x = _x(1, 3, 9, 9)
    with torch.no_grad():
        ref = (x + m.net(F.pad(x, (0, 1, 0, 1), mode="reflect"))[..., :9, :9]).clamp(0, 1)
        torch.testing.assert_close(m(x), ref)


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_backward():
    # compiled before any eager call; the backward once failed in Inductor with replicate-padded
    # convolutions (replication_pad2d_backward strides), hence the zero padding
    for cls in BASES:
        torch.manual_seed(0)
        m = cls(clamp=False)
        c = torch.compile(m, fullgraph=True)
        x = _x(2, 3, 33, 45).requires_grad_(True)
        y = c(x)
        y.sum().backward()
        gx, gw = x.grad.clone(), [p.grad.clone() for p in m.parameters()]
        x.grad = None
        m.zero_grad()
        y2 = m(x)
        y2.sum().backward()
        torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-5)
        for a, p in zip(gw, m.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-4)
