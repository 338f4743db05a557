"""fastdehaze.metrics against independent references (float64 formulas, scikit-image)."""
import math

import numpy as np
import pytest
import torch

from fastdehaze import metrics


def _imgs(B=3, H=32, W=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(B, 3, H, W, generator=g, dtype=torch.float64)
    x = (y + 0.1 * torch.randn(B, 3, H, W, generator=g, dtype=torch.float64))
    return x, y


def test_psnr_per_image_matches_formula_and_clamps():
    x, y = _imgs()
    want = torch.stack([10 * torch.log10(1 / ((x[i].clamp(0, 1) - y[i]) ** 2).mean()) for i in range(3)])
    got = metrics.psnr(x, y)
    assert got.shape == (3,) and got.dtype == torch.float64
    torch.testing.assert_close(got, want)
    # per image, not of the pooled error: differs from the PSNR of the batch mean MSE
    pooled = 10 * torch.log10(1 / ((x.clamp(0, 1) - y) ** 2).mean())
    assert abs(float(got.mean()) - float(pooled)) > 1e-6
    assert math.isinf(float(metrics.psnr(y, y)[0]))
    assert metrics.psnr(x.float()[0], y.float()[0]).shape == (1,)


def test_ssim_matches_skimage_gaussian():
    sk = pytest.importorskip("skimage.metrics")
    x, y = _imgs(B=2, H=48, W=57)
    got = metrics.ssim(x, y)
    for i in range(2):
        a, b = x[i].clamp(0, 1).permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy()
        want = sk.structural_similarity(b, a, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
        assert abs(float(got[i]) - want) < 2e-3, (float(got[i]), want)
    torch.testing.assert_close(metrics.ssim(y, y), torch.ones(2, dtype=torch.float64))


def test_ciede2000():
    pytest.importorskip("skimage.color")
    x, y = _imgs(B=2, H=12, W=12)
    d = metrics.ciede2000(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert float(metrics.ciede2000(y, y).abs().max()) < 1e-9


def test_bad_inputs_name_the_argument():
    x, y = _imgs()
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(x, y[:, :, :5])
    with pytest.raises(TypeError, match="x must be"):
        metrics.psnr(np.zeros((1, 3, 4, 4)), y)
    with pytest.raises(TypeError, match="y must be"):
        metrics.psnr(x, (y * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ValueError, match="RGB"):
        metrics.ciede2000(x[:, :1], y[:, :1])
    assert metrics.psnr(x[:0], y[:0]).shape == (0,)
