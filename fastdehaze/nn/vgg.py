"""VGG19 feature extractor for the contrastive losses (SPEC section 4).

The layers are torchvision's ``vgg19().features`` up to relu5_1 (indices 0..29), defined here
with nn.Conv2d / nn.ReLU / nn.MaxPool2d at the same indices so that a torchvision-format state
dict loads unchanged; torchvision itself is never imported. Nothing is downloaded: weights
come from a local file (the ``weights`` argument or the ``FASTDEHAZE_VGG19_WEIGHTS``
environment variable), e.g. one saved with
``torch.save(torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict(), "vgg19.pth")``.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["VGG19Features", "VGG19_SLICES", "VGG19_CHANNELS"]

#: torchvision ``features`` index ranges of the five slices: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG19_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
#: channels of the five slices' outputs (strides 1, 2, 4, 8, 16).
VGG19_CHANNELS = (64, 128, 256, 512, 512)
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
_KEY = re.compile(r"(?:module\.)?(?:features\.|slice\d\.)?(\d+)\.(weight|bias)")


def _layers() -> nn.Sequential:
    mods, c = [], 3
    for v in _CFG:
        if v == "M":
            mods.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            mods += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    assert len(mods) == 30
    return nn.Sequential(*mods)


class VGG19Features(nn.Module):
    """Frozen VGG19 relu1_1..relu5_1 features (the extractor of AECR-Net, C2PNet and DCMPNet).

    Args:
        weights: a path to a local torchvision-format VGG19 state dict (``features.N.weight``
            keys of the whole model, ``N.weight`` of ``features`` alone, or AECR-Net's
            ``sliceS.N.weight``), or such a state dict; None reads the path from the
            environment variable ``FASTDEHAZE_VGG19_WEIGHTS``. Without either the weights stay
            random (PyTorch's default init) and a UserWarning says so: the features are then
            random features, fine for tests, not for training a dehazer.
        slices: how many of the five slices to compute (1..5).

    Input: images [B,3,H,W] as given (the sources feed images without ImageNet normalisation;
    none is applied here). Output: a list of ``slices`` tensors, [B,64,H,W], [B,128,H/2,W/2],
    [B,256,H/4,W/4], [B,512,H/8,W/8], [B,512,H/16,W/16] (floor division).

    The module is always in eval mode (``train()`` is a no-op) and its parameters never
    require grad; gradients still flow through it to the input.

    Raises:
        FileNotFoundError: ``weights`` (or the variable) names a file that does not exist.
        ValueError: the state dict lacks a VGG19 conv layer below index 30 or has wrong shapes;
            ``slices`` not in 1..5.
    """

    def __init__(self, weights: Optional[Union[str, os.PathLike, Mapping]] = None, slices: int = 5):
        super().__init__()
        if not (isinstance(slices, int) and 1 <= slices <= 5):
            raise ValueError(f"slices must be an int in 1..5, got {slices!r}")
        self.slices = slices
        self.features = _layers()
        if weights is None:
            weights = os.environ.get("FASTDEHAZE_VGG19_WEIGHTS") or None
        self.pretrained = weights is not None
        if weights is None:
            warnings.warn("fastdehaze.nn.VGG19Features: no weights given (argument `weights` or the environment "
                          "variable FASTDEHAZE_VGG19_WEIGHTS): the VGG19 features are RANDOM, not ImageNet features. "
                          "Nothing is downloaded; pass a local torchvision vgg19 state-dict file.",
                          UserWarning, stacklevel=2)
        else:
            self.load_vgg_state_dict(weights)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def load_vgg_state_dict(self, weights) -> None:
        """Load a torchvision-format VGG19 state dict (path or mapping); layers >= 30 and the
        classifier are ignored."""
        if not isinstance(weights, Mapping):
            path = os.fspath(weights)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"VGG19 weights file not found: {path!r}")
            weights = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(weights, Mapping) and "state_dict" in weights and isinstance(weights["state_dict"], Mapping):
                weights = weights["state_dict"]
        sd = {}
        for k, v in weights.items():
            m = _KEY.fullmatch(k)
            if m and not k.startswith("classifier") and int(m.group(1)) < 30:
                sd[f"{m.group(1)}.{m.group(2)}"] = v
        try:
            self.features.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights is not a torchvision VGG19 state dict: {e}") from None

    def train(self, mode: bool = True):
        """No-op: the extractor stays in eval mode (frozen)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list:
        out = []
        h = x
        for lo, hi in VGG19_SLICES[:self.slices]:
            for i in range(lo, hi):
                h = self.features[i](h)
            out.append(h)
        return out
