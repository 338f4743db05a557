"""HazeSynthesis (issue 9 items 1 and 9): physics against a float64 reference written here,
draws inside their ranges, seed reproducibility, gradients, batch 0, odd sizes, bad input."""

import pytest
import torch

from fastdehaze.nn import HazeSample, HazeSynthesis

BACKENDS = ["reference", "cpu"]


def ref_haze(J, d, A, beta):
    """hazy = J t + A (1 - t), t = exp(-beta d), in float64."""
    J, d, A, beta = (x.double() for x in (J, d, A, beta))
    t = torch.exp(-beta * d)
    return J * t + A * (1 - t), t


def _inputs(B=3, H=17, W=33, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    J = torch.rand(B, 3, H, W, generator=g, dtype=dtype)
    d = torch.rand(B, 1, H, W, generator=g, dtype=dtype) * 5 + 0.1
    return J, d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_physics_normalized(backend, per_channel):
    J, d = _inputs()
    s = HazeSynthesis("its", per_channel_A=per_channel, backend=backend)
    out = s(J, d, generator=torch.Generator().manual_seed(1))
    assert isinstance(out, HazeSample)
    assert out.A.shape == ((3, 3, 1, 1) if per_channel else (3, 1, 1, 1)) and out.beta.shape == (3, 1, 1, 1)
    dn = d / d.amax(dim=(1, 2, 3), keepdim=True)  # RESIDE-style per-image normalisation
    hz, t = ref_haze(J, dn, out.A, out.beta)
    torch.testing.assert_close(out.hazy, hz, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.t, t, rtol=1e-12, atol=1e-12)
    assert out.hazy.dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_physics_metres_and_t_path(backend):
    J, d = _inputs(B=2, H=5, W=7)
    s = HazeSynthesis("ots", depth_kind="metres", backend=backend)
    g = torch.Generator().manual_seed(3)
    out = s(J, d, generator=g)
    hz, t = ref_haze(J, d, out.A, out.beta)  # depth used as given
    torch.testing.assert_close(out.hazy, hz, rtol=1e-12, atol=1e-12)
    tt = torch.rand(2, 1, 5, 7, dtype=torch.float64)
    o2 = s(J, t=tt, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(o2.hazy, J * tt + o2.A * (1 - tt), rtol=1e-12, atol=1e-12)
    assert o2.beta is None and o2.t is tt
    torch.testing.assert_close(o2.A, out.A)  # the same seed gives the same A on either path


def test_float32_and_half():
    J, d = _inputs(dtype=torch.float32)
    out = HazeSynthesis(backend="cpu")(J, d, generator=torch.Generator().manual_seed(0))
    hz, _ = ref_haze(J, d / d.amax(dim=(1, 2, 3), keepdim=True), out.A, out.beta)
    torch.testing.assert_close(out.hazy.double(), hz, rtol=1e-5, atol=1e-6)
    for dt in (torch.float16, torch.bfloat16):
        o = HazeSynthesis(backend="cpu")(J.to(dt), d.to(dt), generator=torch.Generator().manual_seed(0))
        assert o.hazy.dtype == dt and o.A.dtype == torch.float32
        torch.testing.assert_close(o.hazy.double(), hz, rtol=0, atol=2e-2)


@pytest.mark.parametrize("preset,A,beta", [("its", (0.7, 1.0), (0.6, 1.8)), ("ots", (0.8, 1.0), (0.04, 0.2)),
                                           ("indoor", (0.7, 1.0), (0.6, 1.8))])
def test_draws_inside_ranges(preset, A, beta):
    s = HazeSynthesis(preset, per_channel_A=True)
    a, b = s.draw(4000, 3, torch.Generator().manual_seed(0))
    assert a.min() >= A[0] and a.max() <= A[1] and b.min() >= beta[0] and b.max() <= beta[1]
    # the draws fill the range (uniform), not a corner of it
    assert a.min() < A[0] + 0.01 * (A[1] - A[0]) and a.max() > A[1] - 0.01 * (A[1] - A[0])
    assert b.min() < beta[0] + 0.01 * (beta[1] - beta[0]) and b.max() > beta[1] - 0.01 * (beta[1] - beta[0])
    assert (a[:, 0] != a[:, 1]).all()  # per-channel A really differs per channel


def test_custom_ranges_override_preset():
    s = HazeSynthesis("its", A_range=(0.5, 0.5), beta_range=(2.0, 3.0))
    J, d = _inputs()
    out = s(J, d, generator=torch.Generator().manual_seed(0))
    assert (out.A == 0.5).all() and out.beta.min() >= 2.0 and out.beta.max() <= 3.0


def test_seed_reproducibility():
    J, d = _inputs()
    s = HazeSynthesis()
    o1 = s(J, d, generator=torch.Generator().manual_seed(7))
    o2 = s(J, d, generator=torch.Generator().manual_seed(7))
    o3 = s(J, d, generator=torch.Generator().manual_seed(8))
    assert torch.equal(o1.hazy, o2.hazy) and torch.equal(o1.A, o2.A) and torch.equal(o1.beta, o2.beta)
    assert not torch.equal(o1.A, o3.A) and not torch.equal(o1.beta, o3.beta)
    # one generator across two batches continues its stream (two batches differ)
    g = torch.Generator().manual_seed(7)
    a1, a2 = s(J, d, generator=g), s(J, d, generator=g)
    assert torch.equal(a1.A, o1.A) and not torch.equal(a1.A, a2.A)
    # the same seed gives the same values whatever J's dtype (draws are float64 on the CPU)
    o4 = s(J.float(), d.float(), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(o4.A.double(), o1.A, rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    J, d = _inputs(B=2, H=3, W=4)
    J.requires_grad_(True)
    s = HazeSynthesis(backend=backend, return_t=False)
    A, beta = s.draw(2, 3, torch.Generator().manual_seed(0))

    def f(J, d):
        return s(J, d, generator=torch.Generator().manual_seed(0)).hazy

    assert torch.autograd.gradcheck(f, (J, d.requires_grad_(True)), eps=1e-6, atol=1e-7)
    tt = torch.rand(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda J, t: s(J, t=t, generator=torch.Generator().manual_seed(0)).hazy,
                                    (J, tt), eps=1e-6, atol=1e-7)
    # d hazy / d J is t
    out = s(J, d.detach(), generator=torch.Generator().manual_seed(0))
    (gJ,) = torch.autograd.grad(out.hazy.sum(), J)
    dn = d.detach() / d.detach().amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(gJ, torch.exp(-beta * dn).expand_as(J))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero_and_odd_sizes(backend):
    s = HazeSynthesis(backend=backend)
    out = s(torch.rand(0, 3, 5, 7), torch.rand(0, 1, 5, 7))
    assert out.hazy.shape == (0, 3, 5, 7) and out.A.shape == (0, 1, 1, 1) and out.t.shape == (0, 1, 5, 7)
    for H, W in [(1, 1), (3, 3), (17, 1), (257, 3)]:
        J, d = _inputs(B=2, H=H, W=W)
        out = s(J, d, generator=torch.Generator().manual_seed(0))
        hz, _ = ref_haze(J, d / d.amax(dim=(1, 2, 3), keepdim=True), out.A, out.beta)
        torch.testing.assert_close(out.hazy, hz, rtol=1e-12, atol=1e-12)


def test_zero_depth_is_no_haze_and_noncontiguous():
    s = HazeSynthesis()
    J = torch.rand(2, 5, 7, 3, dtype=torch.float64).permute(0, 3, 1, 2)  # channels_last strides
    out = s(J, torch.zeros(2, 1, 5, 7, dtype=torch.float64))
    assert torch.equal(out.hazy, J.contiguous())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("depth_kind", ["normalized", "metres"])
def test_non_finite_depth_is_refused(bad, depth_kind):
    """A NaN / inf depth is a ValueError naming depth (it was a silently all-NaN hazy image)."""
    J, d = _inputs(B=2, H=3, W=3)
    d[1, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="depth must be finite"):
        HazeSynthesis(depth_kind=depth_kind)(J, d)


@pytest.mark.parametrize("bad", [1.5, 1 + 1e-6, -0.1, float("nan")])
def test_t_outside_0_1_is_refused(bad):
    """The t path: a transmission > 1, < 0 or NaN is a ValueError naming t (it gave hazy values
    outside the range of J and A); 0 and 1 themselves are fine."""
    J, _ = _inputs(B=2, H=3, W=3)
    t = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    t[1, 0, 2, 0] = bad
    with pytest.raises(ValueError, match=r"t must be a transmission in \[0, 1\]"):
        HazeSynthesis()(J, t=t)
    t[1, 0, 2, 0], t[0, 0, 0, 0] = 1.0, 0.0
    out = HazeSynthesis()(J, t=t)
    assert torch.isfinite(out.hazy).all()


@pytest.mark.parametrize("kwargs,match", [
    ({"A_range": (0.0, 1.0)}, "A_range"), ({"A_range": (-1.0, 1.0)}, "A_range"),
    ({"A_range": (0.9, 0.8)}, "A_range"), ({"A_range": (0.5, float("inf"))}, "A_range"),
    ({"A_range": (float("nan"), 1.0)}, "A_range"), ({"A_range": 0.8}, "A_range"),
    ({"beta_range": (-0.1, 1.0)}, "beta_range"), ({"beta_range": (2.0, 1.0)}, "beta_range"),
    ({"beta_range": (0.1, float("nan"))}, "beta_range"), ({"beta_range": (1, 2, 3)}, "beta_range"),
    ({"preset": "foggy"}, "preset"), ({"depth_kind": "disparity"}, "disparity map is inverse depth"),
    ({"depth_kind": "inches"}, "depth_kind"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HazeSynthesis(**kwargs)


def test_bad_forward_inputs():
    s = HazeSynthesis()
    J, d = _inputs(B=2, H=5, W=7)
    with pytest.raises(ValueError, match="neither"):
        s(J)
    with pytest.raises(ValueError, match="not both"):
        s(J, d, t=d)
    with pytest.raises(TypeError, match="J must"):
        s(J.numpy(), d)
    with pytest.raises(TypeError, match="J must"):
        s((J * 255).to(torch.uint8), d)
    with pytest.raises(ValueError, match="J must be 4-d"):
        s(J[0], d)
    with pytest.raises(ValueError, match="depth must be"):
        s(J, d[:, :, :4])
    with pytest.raises(ValueError, match="depth must be"):
        s(J, d[:1])
    with pytest.raises(ValueError, match="t must be"):
        s(J, t=d[0])
    with pytest.raises(TypeError, match="depth must"):
        s(J, (d * 10).long())
    with pytest.raises(ValueError, match="depth must be >= 0"):
        s(J, -d)
    with pytest.raises(TypeError, match="generator"):
        s(J, d, generator=0)
