"""fastdehaze.nn.DarkChannelDehazer and the tiled DCP (dehaze_tiled): against the float64 reference."""
import math

import pytest
import torch

import fastdehaze.nn.dehazers as dz
from fastdehaze import ops
from fastdehaze.io import quantize
from fastdehaze.nn import DarkChannelDehazer, dehaze_tiled, tile_halo

SMALL = dict(patch=5, omega=0.95, top=0.01, r=4, eps=1e-3, t0=0.1)


def _hazy(B=1, H=37, W=45, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    J = torch.rand(B, 3, H, W, generator=g, dtype=torch.float64)
    t = torch.linspace(0.3, 0.9, W, dtype=torch.float64).view(1, 1, 1, W)
    return (J * t + 0.85 * (1 - t)).to(dtype)


def _ref(I, **kw):
    return ops.dehaze_dcp(I, **kw, return_all=True, backend="reference")


def test_defaults_are_the_spec_ones():
    m = DarkChannelDehazer()
    assert (m.patch, m.omega, m.top, m.r, m.eps, m.t0, m.backend, m.tile) == (15, 0.95, 0.001, 60, 1e-3, 0.1, "auto", None)
    assert "patch=15" in repr(m) and list(m.parameters()) == []


def test_module_reference_equals_op():
    I = _hazy()
    m = DarkChannelDehazer(**SMALL, backend="reference")
    J, t, A = m(I, return_all=True)
    Jr, tr, Ar = _ref(I, **SMALL)
    torch.testing.assert_close(J, Jr, rtol=0, atol=0)
    assert J.shape == I.shape and t.shape == (1, 1, 37, 45) and A.shape == (1, 3, 1, 1)
    assert float(t.min()) >= SMALL["t0"] - 1e-12 and float(t.max()) <= 1 and 0 <= float(J.min()) and float(J.max()) <= 1
    torch.testing.assert_close(m(I), J, rtol=0, atol=0)


def test_module_fused_backends_match_reference(backend_device):
    backend, device = backend_device
    I = _hazy(H=17, W=19)
    m = DarkChannelDehazer(**SMALL, backend=backend)
    J, t, A = m(I.to(device), return_all=True)
    Jr, tr, Ar = _ref(I, **SMALL)
    torch.testing.assert_close(A.cpu(), Ar, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(t.cpu(), tr, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(J.cpu(), Jr, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("H,W,tile", [(37, 45, 16), (40, 23, 7), (9, 50, 10), (33, 33, 32)])
def test_tiled_equals_untiled_float64_reference(H, W, tile):
    I = _hazy(B=2, H=H, W=W, seed=H)
    J, t, A = dehaze_tiled(I, **SMALL, tile=tile, return_all=True, backend="reference")
    Jr, tr, Ar = _ref(I, **SMALL)
    torch.testing.assert_close(A, Ar, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t, tr, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(J, Jr, rtol=1e-10, atol=1e-10)


def test_tiled_equals_untiled_float32_fused(backend_device):
    backend, device = backend_device
    I = _hazy(H=40, W=52, dtype=torch.float32, seed=3)
    kw = dict(SMALL, r=6)
    J = dehaze_tiled(I.to(device), **kw, tile=16, backend=backend)
    Jr = ops.dehaze_dcp(I.to(device), **kw, backend=backend)
    assert (J - Jr).abs().max().item() <= 1e-5


def test_halo_too_small_is_detected(monkeypatch):
    # The tiled == untiled tests can fail: with a halo that ignores the guided filter's 2r the tiles differ.
    I = _hazy(H=37, W=45)
    monkeypatch.setattr(dz, "tile_halo", lambda patch, r: patch // 2 + r)
    J = dehaze_tiled(I, **SMALL, tile=12, backend="reference")
    assert (J - _ref(I, **SMALL)[0]).abs().max().item() > 1e-5


def test_tile_halo_value():
    assert tile_halo(15, 60) == 7 + 120 + 1


def test_tiled_uint8_input_and_output():
    I = _hazy(H=30, W=41, seed=5)
    u8 = quantize(I, 8)
    J = dehaze_tiled(u8, **SMALL, tile=13, out_bits=8, backend="reference")
    Jr = _ref(u8.double() / 255, **SMALL)[0]
    assert J.dtype == torch.uint8 and J.shape == u8.shape
    assert (J.int() - quantize(Jr, 8).int()).abs().max().item() <= 1
    J16 = dehaze_tiled(quantize(I, 16), **SMALL, tile=13, out_bits=16, backend="reference")
    assert J16.dtype == torch.uint16


def test_tiled_noncontiguous_and_batch0():
    I = _hazy(H=21, W=26, seed=7)
    nhwc = I.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    torch.testing.assert_close(dehaze_tiled(nhwc, **SMALL, tile=8, backend="reference"), _ref(I, **SMALL)[0],
                               rtol=1e-10, atol=1e-10)
    sl = _hazy(H=21, W=60, seed=7)[:, :, :, 10:36]
    torch.testing.assert_close(dehaze_tiled(sl, **SMALL, tile=8, backend="reference"), _ref(sl.contiguous(), **SMALL)[0],
                               rtol=1e-10, atol=1e-10)
    J, t, A = dehaze_tiled(I[:0], **SMALL, tile=8, return_all=True, backend="reference")
    assert J.shape == (0, 3, 21, 26) and t.shape == (0, 1, 21, 26)


def test_module_tile_option_equals_untiled():
    I = _hazy(H=30, W=35, seed=9)
    J = DarkChannelDehazer(**SMALL, backend="reference", tile=10)(I)
    torch.testing.assert_close(J, _ref(I, **SMALL)[0], rtol=1e-10, atol=1e-10)


def test_top_k_indices_matches_stable_sort():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        d = torch.randint(0, 5, (200,), generator=g).double()
        if trial % 3 == 0:
            d[torch.randint(0, 200, (4,), generator=g)] = math.nan
        for k in (1, 7, 40, 200):
            got = set(dz._top_k_indices(d, k).tolist())
            key = torch.where(torch.isnan(d), torch.full_like(d, math.inf), d)
            order = torch.sort(key, descending=True, stable=True).indices
            nan_first = torch.sort(torch.isnan(d)[order].to(torch.int8), descending=True, stable=True).indices
            want = set(order[nan_first][:k].tolist())
            assert got == want, (trial, k)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(patch=4), ValueError, "patch"), (dict(patch=2.0), TypeError, "patch"), (dict(omega=1.5), ValueError, "omega"),
    (dict(top=-0.1), ValueError, "top"), (dict(r=-1), ValueError, "r must"), (dict(r=1.5), TypeError, "r must"),
    (dict(eps=0.0), ValueError, "eps"), (dict(t0=0.0), ValueError, "t0"), (dict(tile=0), ValueError, "tile"),
    (dict(backend="gpu"), ValueError, "backend"),
])
def test_bad_parameters(kw, exc, match):
    with pytest.raises(exc, match=match):
        DarkChannelDehazer(**kw)


def test_bad_inputs():
    with pytest.raises(TypeError, match="I must be"):
        dehaze_tiled([[1.0]])
    with pytest.raises(ValueError, match="I must have 4 dims"):
        dehaze_tiled(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="I must be floating"):
        dehaze_tiled(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="out_bits"):
        dehaze_tiled(torch.rand(1, 3, 8, 8), out_bits=12)
    with pytest.raises(TypeError, match="I must be a floating"):
        DarkChannelDehazer(backend="reference")(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
