"""Image quality metrics in one place (SPEC section 6), on torchmetrics.

Every function takes two image batches ``x`` (the result) and ``y`` (the reference), floating
[B,C,H,W] (or one [C,H,W] image) with values meant to lie in [0, 1], and returns one value per
image (a float64 tensor [B]); average over images yourself (``.mean()``), which is how the
README's tables are computed (mean of per-image PSNR, not PSNR of the mean error).

* :func:`psnr`: 10 log10(1 / MSE) per image, data range 1, on ``x`` clamped to [0, 1]
  (a network output may overshoot; the reference is used as given). A perfect match is +inf.
  ``torchmetrics.functional.image.peak_signal_noise_ratio(..., dim=(1, 2, 3), reduction="none")``.
* :func:`ssim`: SSIM (Wang et al., TIP 2004) with the 11x11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, data range 1, at full resolution (no downsampling), averaged over
  channels and the valid window positions (torchmetrics' convention: the 5-px border where the
  window does not fit is left out). Images smaller than 11 px on a side are a ValueError.
  ``torchmetrics.functional.image.structural_similarity_index_measure``.
* :func:`ciede2000`: the mean CIEDE2000 colour difference (Sharma et al., 2005) per image, on
  sRGB -> CIELAB (D65) through ``skimage.color`` (scikit-image is not a runtime dependency of
  fastdehaze: :func:`ciede2000_available` tells whether it is installed; without it
  :func:`ciede2000` raises ImportError, and ``fastdehaze eval`` leaves the column out and
  says so). torchmetrics has no CIEDE2000.

PSNR and CIEDE2000 are computed in float64, SSIM's convolutions in float32 (torchmetrics'
float64 convolution is ~17x slower on the CPU; the difference is < 1e-5 on [0, 1] images), on
the inputs' device (CPU tensors stay on the CPU); results are float64.

Raises (every function): TypeError if an input is not a floating tensor; ValueError if the
shapes differ, an input is not 3-d/4-d, or (ciede2000) the images are not RGB.
"""
from __future__ import annotations

import torch

__all__ = ["psnr", "ssim", "ciede2000", "ciede2000_available"]


def _pair(x, y):
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point image tensor [B,C,H,W] in [0, 1], got "
                            f"{v.dtype if isinstance(v, torch.Tensor) else type(v).__name__}")
        if v.dim() not in (3, 4):
            raise ValueError(f"{name} must be [B,C,H,W] or [C,H,W], got shape {tuple(v.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    return x.detach().to(torch.float64).clamp(0, 1), y.detach().to(torch.float64)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ([B] float64) of ``x`` clamped to [0, 1] against ``y``, data range 1."""
    from torchmetrics.functional.image import peak_signal_noise_ratio
    x, y = _pair(x, y)
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM ([B] float64), 11x11 Gaussian window (sigma 1.5), data range 1, full resolution."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    x, y = _pair(x, y)
    if x.shape[-1] < 11 or x.shape[-2] < 11:
        raise ValueError(f"x and y must be at least 11x11 for SSIM's 11x11 window, got {tuple(x.shape[-2:])}")
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    # float32 convolutions: torchmetrics' float64 path is ~17x slower on the CPU (14 s for one
    # 620x460 image); on [0, 1] images the float32 result differs by < 1e-5
    return structural_similarity_index_measure(x.float(), y.float(), gaussian_kernel=True, sigma=1.5,
                                               kernel_size=11, data_range=1.0, k1=0.01, k2=0.03,
                                               reduction="none").double()


def ciede2000_available() -> bool:
    """True when scikit-image (``skimage.color.deltaE_ciede2000``) can be imported."""
    try:
        import skimage.color  # noqa: F401
    except ImportError:
        return False
    return True


def ciede2000(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean CIEDE2000 difference ([B] float64, 0 = identical) of sRGB images in [0, 1].

    Raises ImportError (naming scikit-image) when it is not installed."""
    try:
        from skimage.color import deltaE_ciede2000, rgb2lab
    except ImportError as e:
        raise ImportError("fastdehaze.metrics.ciede2000 needs scikit-image (pip install scikit-image)") from e
    x, y = _pair(x, y)
    if x.shape[1] != 3:
        raise ValueError(f"x and y must be RGB [B,3,H,W] for CIEDE2000, got shape {tuple(x.shape)}")
    out = []
    for a, b in zip(x.cpu().permute(0, 2, 3, 1).numpy(), y.clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()):
        out.append(float(deltaE_ciede2000(rgb2lab(a), rgb2lab(b)).mean()))
    return torch.tensor(out, dtype=torch.float64, device=x.device)
