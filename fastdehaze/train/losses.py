"""The training objective ([loss] of the config), from fastdehaze.nn's fused losses.

    loss = l1 * L1(J, clear) + l1_j0 * L1(J0, clear) + contrast_weight * C
    (depth mode: DCMPNetLoss's dehaze + depth terms replace l1 * L1(J, clear), see below)

C (``loss.contrast``), on VGG19 features:

* ``contrast``: AECR-Net's ContrastLoss(J, clear, hazy): the hazy input is the negative.
* ``c2r``: C2PNet's C2RLoss(J, clear, [hazy, DCP(hazy), J0]) with equal negative weights: the
  hazy input, the fused DCP output of the batch (DarkChannelDehazer, computed on the fly under
  no_grad) and the PRM's first estimate J0 (detached) as increasingly hard negatives.
* ``iicl``: IICLLoss(J, clear, hazy): inter + intra (bright/dark patches) contrastive learning.

VGG19 weights: ``loss.vgg_weights`` names a local torchvision vgg19 state-dict file (nothing is
downloaded; none exists on the development machine). Without one a contrastive term is
refused (a ConfigError naming ``loss.vgg_weights``) unless ``loss.vgg_random_ok = true``,
which runs it with random VGG19 features (a fixed random projection, not perceptual features:
useful for timing and tests, not claimed to help quality).

Depth mode (``model.depth``, DCMPNet, Cong et al. CVPR 2024): a DepthEstimator D is trained
jointly on the dehazed output; DCMPNetLoss(J, clear, hazy, D(J), D*) gives
dehaze = L1(J, clear) + depth_weight L1(D(J), D*) and the difference-perception depth loss,
both added. D* is read from ``data.depth`` or computed by a frozen teacher
(``model.depth_teacher``) on the clear image under no_grad.
"""
from __future__ import annotations

import pathlib
import warnings

import torch
import torch.nn.functional as F

from .config import Config, ConfigError

__all__ = ["build_losses", "build_teacher", "compute_loss"]


def build_losses(cfg: Config, device) -> dict:
    L, backend = cfg.loss, cfg.model.backend
    out = {}
    if L.contrast != "none" and L.contrast_weight > 0:
        from fastdehaze.nn import C2RLoss, ContrastLoss, IICLLoss, VGG19Features
        if L.vgg_weights:
            if not pathlib.Path(L.vgg_weights).is_file():
                raise ConfigError(f"loss.vgg_weights: file not found: {L.vgg_weights}")
            vgg = VGG19Features(L.vgg_weights)
        elif L.vgg_random_ok:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                vgg = VGG19Features(None)
            print("warning: loss.vgg_random_ok: the contrastive term uses RANDOM VGG19 features", flush=True)
        else:
            raise ConfigError(f"loss.vgg_weights: loss.contrast = {L.contrast!r} needs a local VGG19 weights file "
                              "(nothing is downloaded); set loss.vgg_weights = 'PATH', or loss.vgg_random_ok = "
                              "true to run it with random features, or loss.contrast = 'none'")
        vgg = vgg.to(device)
        if L.contrast == "contrast":
            out["contrast"] = ContrastLoss(vgg=vgg, backend=backend)
        elif L.contrast == "c2r":
            from fastdehaze.nn import DarkChannelDehazer
            out["contrast"] = C2RLoss(negative_weights=(1 / 3, 1 / 3, 1 / 3), vgg=vgg, backend=backend)
            out["dcp"] = DarkChannelDehazer(backend=backend)
        else:
            out["contrast"] = IICLLoss(patch=L.iicl_patch, stride=L.iicl_patch, k=L.iicl_k, vgg=vgg, backend=backend)
    if cfg.model.depth:
        from fastdehaze.nn import DCMPNetLoss
        out["dcmp"] = DCMPNetLoss(contrast_weight=0.0, depth_weight=L.depth_weight, backend=backend)
    return out


def build_teacher(cfg: Config, device):
    """The frozen depth teacher: a fastdehaze model file, or a torch.export .pt2 (trust_code only)."""
    p = cfg.model.depth_teacher
    if not p:
        return None
    if not pathlib.Path(p).is_file():
        raise ConfigError(f"model.depth_teacher: file not found: {p}")
    if p.endswith(".pt2"):
        if not cfg.model.trust_code:
            raise ConfigError(f"model.depth_teacher: {p} is a torch.export program, which runs the code it "
                              "holds; set model.trust_code = true if you trust it")
        net = torch.export.load(p).module()
    else:
        from fastdehaze.nn import load_model
        try:
            net = load_model(p, trust_code=cfg.model.trust_code)
        except ValueError as e:
            raise ConfigError(f"model.depth_teacher: {e}") from None
        net.eval()
    net = net.to(device)
    for q in getattr(net, "parameters", lambda: [])():
        q.requires_grad_(False)
    return net


def compute_loss(losses: dict, cfg: Config, J, J0, clear, hazy, D=None, D_target=None):
    L = cfg.loss
    Jf, J0f, cf = J.float(), J0.float(), clear.float()
    if "dcmp" in losses:
        parts = losses["dcmp"](Jf, cf, hazy.float(), D.float(), D_target)
        loss = parts.dehaze + parts.depth
    else:
        loss = L.l1 * F.l1_loss(Jf, cf)
    if L.l1_j0:
        loss = loss + L.l1_j0 * F.l1_loss(J0f, cf)
    c = losses.get("contrast")
    if c is not None:
        if L.contrast == "c2r":
            with torch.no_grad():
                dcp = losses["dcp"](hazy.float()).clamp(0, 1)
            loss = loss + L.contrast_weight * c(J, clear, [hazy, dcp, J0.detach()])
        else:
            loss = loss + L.contrast_weight * c(J, clear, hazy)
    return loss
