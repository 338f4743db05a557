"""Regressions from trying to break the public ops with the mistakes users make (each once
crashed the process, returned a silently wrong answer or raised the wrong exception)."""
import numpy as np
import pytest
import torch

import fastdehaze.ops as F

X = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_huge_radius_and_patch_equal_the_whole_image_window(backend):
    """r or patch far past the image (2**62 once overflowed 2r+1 in the C++ kernels and corrupted
    the heap) acts as a window covering the whole image."""
    big = 2 ** 62
    torch.testing.assert_close(F.box_filter(X, big, backend=backend), X.mean((2, 3), keepdim=True).expand_as(X))
    torch.testing.assert_close(F.box_filter(X, big, backend=backend), F.box_filter(X, 16, backend=backend))
    torch.testing.assert_close(F.guided_filter(X[:, :1], X, r=big, backend=backend),
                               F.guided_filter(X[:, :1], X, r=16, backend=backend))
    torch.testing.assert_close(F.dark_channel(X, patch=big + 1, backend=backend), X.amin().expand(1, 1, 16, 16))
    torch.testing.assert_close(F.dehaze_dcp(X, patch=big + 1, r=big, backend=backend),
                               F.dehaze_dcp(X, patch=33, r=16, backend=backend))


def test_numpy_integers_are_ints():
    torch.testing.assert_close(F.dehaze_dcp(X, patch=np.int64(7), r=np.int32(5)), F.dehaze_dcp(X, patch=7, r=5))
    torch.testing.assert_close(F.box_filter(X, np.int64(3)), F.box_filter(X, 3))
    with pytest.raises(TypeError, match="patch"):
        F.dark_channel(X, patch=15.0)
    with pytest.raises(TypeError, match="return_all"):
        F.dehaze_dcp(X, return_all="yes")


@pytest.mark.parametrize("t0", [float("nan"), 0.0, -1.0, torch.tensor(-1.0), torch.zeros(1, 3, 1, 1),
                                torch.tensor(float("nan"))])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_recover_rejects_nonpositive_or_nan_t0(t0, backend):
    with pytest.raises(ValueError, match="t0"):
        F.recover(X, torch.rand(1, 1, 16, 16), 0.9, t0=t0, backend=backend)


@pytest.mark.parametrize("call", [
    lambda x: F.dark_channel(x), lambda x: F.bright_channel(x), lambda x: F.dehaze_dcp(x),
    lambda x: F.transmission(x, 0.9), lambda x: F.box_filter(x, 2),
    lambda x: F.patch_brightness_rank(x, patch=4, measure="mean"),
    lambda x: F.difference_perception_weight(x), lambda x: F.recover(x, torch.rand(1, 1, 16, 16), 0.9),
], ids=["dark_channel", "bright_channel", "dehaze_dcp", "transmission", "box_filter", "patch_rank", "dpw",
        "recover"])
def test_zero_channels_is_a_value_error(call):
    with pytest.raises(ValueError, match="at least one channel"):
        call(torch.rand(1, 0, 16, 16))
