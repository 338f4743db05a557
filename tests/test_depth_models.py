"""DepthEstimator and DepthGuidedBase (issue 9 item 4): shapes, non-negative depth, the
contract attributes, config rebuild, and one DCMPNet training step with DCMPNetLoss and
DepthDifferenceAttention whose gradients reach the depth network."""
import json

import pytest
import torch

from fastdehaze.nn import (ARCHITECTURES, AODNet, DCMPNetLoss, DepthDifferenceAttention, DepthEstimator,
                           DepthGuidedBase, DepthGuidedOutput, UNet)
from fastdehaze.nn.bases import model_stats


def _x(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_registered_and_contract():
    for cls in (DepthEstimator, DepthGuidedBase):
        assert ARCHITECTURES[cls.__name__] is cls
        m = cls()
        assert m.value_range == (0.0, 1.0) and m.global_context(_x(1, 3, 8, 8)) == {}
        assert m.pad_multiple == 8
    assert DepthEstimator().receptive_field == 107
    assert DepthGuidedBase().receptive_field == 2 * (53 + 53) + 1
    assert DepthGuidedBase(base=AODNet()).receptive_field == 2 * (53 + 7) + 1
    assert DepthGuidedBase(base=AODNet(), depth=DepthEstimator(levels=1)).pad_multiple == 2


def test_documented_sizes():
    assert model_stats(DepthEstimator())["params"] == 80849 and "80,849 parameters" in DepthEstimator.__doc__
    assert model_stats(DepthGuidedBase())["params"] == 403107 and "403,107 parameters" in DepthGuidedBase.__doc__


@pytest.mark.parametrize("shape", [(2, 3, 17, 33), (1, 3, 1, 1), (0, 3, 5, 5), (1, 3, 3, 257)])
def test_shapes_and_nonnegative(shape):
    torch.manual_seed(0)
    with torch.no_grad():
        D = DepthEstimator()(_x(*shape))
        assert D.shape == (shape[0], 1) + shape[2:] and (D >= 0).all()
        out = DepthGuidedBase()(_x(*shape), return_depth=True)
    assert isinstance(out, DepthGuidedOutput) and out.J.shape == shape and out.depth.shape == D.shape


def test_config_rebuild_and_specs():
    m = DepthGuidedBase(base=AODNet(), depth=DepthEstimator(width=4, levels=2))
    cfg = m.config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["base"] == {"name": "AODNet", "args": AODNet().config()}
    m2 = type(m)(**cfg)
    assert isinstance(m2.base, AODNet) and m2.depth.levels == 2
    assert m2.state_dict().keys() == m.state_dict().keys()
    m3 = DepthEstimator(width=4)
    assert DepthEstimator(**m3.config()).state_dict().keys() == m3.state_dict().keys()


def test_bad_arguments():
    with pytest.raises(TypeError, match="base must be"):
        DepthGuidedBase(base=3)
    with pytest.raises(TypeError, match="depth must be"):
        DepthGuidedBase(depth="UNet")
    with pytest.raises(ValueError, match="trust_code"):
        DepthGuidedBase(base={"name": "os:path", "args": {}})
    with pytest.raises(ValueError, match="width"):
        DepthEstimator(width=0)
    with pytest.raises(ValueError, match="I must be"):
        DepthEstimator()(_x(1, 1, 8, 8))
    with pytest.raises(ValueError, match="I must be"):
        DepthGuidedBase()(_x(1, 4, 8, 8))


def test_depth_changes_the_output():
    # the depth estimate really reaches the base: another depth network, another output
    torch.manual_seed(0)
    m = DepthGuidedBase(base=AODNet())
    x = _x(1, 3, 16, 16)
    with torch.no_grad():
        y = m(x)
        for p in m.depth.parameters():
            p.add_(0.5)
        assert not torch.allclose(m(x), y)


def test_receptive_field_measured():
    torch.manual_seed(0)
    m = DepthGuidedBase(base=AODNet(clamp=False), depth=DepthEstimator(width=4, levels=2)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    x = _x(1, 3, 160, 160, dtype=torch.float64)
    r = 0
    with torch.no_grad():
        y0 = m(x)
        for i, j in ((80, 80), (81, 81), (83, 82)):
            x1 = x.clone()
            x1[0, :, i, j] += 0.25
            nz = ((m(x1) - y0).abs().amax(1)[0] > 0).nonzero()
            r = max(r, int((nz[:, 0] - i).abs().max()), int((nz[:, 1] - j).abs().max()))
    assert r <= m.receptive_field // 2 and m.receptive_field <= 2 * (2 * r + 1), (r, m.receptive_field)


def test_dcmpnet_training_step_reaches_depth_net():
    torch.manual_seed(0)
    model = DepthGuidedBase(base=UNet(width=4, levels=2), depth=DepthEstimator(width=4, levels=2))
    teacher = DepthEstimator(width=4, levels=1).requires_grad_(False)  # a frozen stand-in teacher
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    I, J = _x(2, 3, 24, 20, seed=1), _x(2, 3, 24, 20, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        D_target = teacher(J)
    J_hat = model(I)
    D_hat = model.estimate_depth(J_hat)
    losses = DCMPNetLoss(contrast_weight=0)(J_hat, J, I, D_hat, D_target)
    # DepthDifferenceAttention: weight the output's error where its depth differs most
    att = DepthDifferenceAttention()(D_hat, D_target, (J_hat - J).abs()).mean()
    (losses.dehaze + losses.depth + 0.1 * att).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("depth."))


def test_global_context_is_the_bases():
    class GlobalBase(torch.nn.Module):
        def global_context(self, x):
            return {"mean": x.mean(dim=(2, 3), keepdim=True)}

        def forward(self, x, context=None):
            m = self.global_context(x)["mean"] if context is None else context["mean"]
            return (x - m + 0.5).clamp(0, 1)

    torch.manual_seed(0)
    m = DepthGuidedBase(base=GlobalBase(), depth=DepthEstimator(width=4, levels=1))
    x = _x(1, 3, 16, 16)
    ctx = m.global_context(x)
    assert list(ctx) == ["base.mean"]
    with torch.no_grad():
        torch.testing.assert_close(m(x, context=ctx), m(x))  # the context of the full image = its own
        assert not torch.allclose(m(x[..., :8, :8], context=ctx), m(x[..., :8, :8]))
    assert DepthGuidedBase(base=AODNet()).global_context(x) == {}


def test_tiled_equals_untiled():
    progressive = pytest.importorskip("fastdehaze.nn.progressive")
    torch.manual_seed(0)
    m = DepthGuidedBase(base=AODNet(), depth=DepthEstimator(width=4, levels=2)).eval()
    halo = m.receptive_field // 2 + 1
    x = _x(1, 3, 2 * halo + 5, 2 * halo + 9)
    with torch.no_grad():
        full = m(x)
        tiled = progressive.tiled_forward(m, x, tile=halo)
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-5)
