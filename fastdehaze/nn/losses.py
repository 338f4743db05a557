"""Contrastive regularisation losses on VGG19 features (SPEC sections 3 and 4), drop-in for
the sources' modules, computed by the fused :func:`fastdehaze.ops.contrastive_loss`.

* :class:`ContrastLoss`: AECR-Net (Wu et al., CVPR 2021) ``ContrastLoss``: same call
  ``loss(a, p, n)`` on images and the same numbers for the same input tensors.
* :class:`C2RLoss`: C2PNet (Zheng et al., CVPR 2023) curricular contrastive regularisation:
  several negatives with weights w_k summing to 1.
* :class:`IICLLoss`: inter + intra contrastive learning of the ICASSP 2023 progressive
  dehazing framework, as designed in SPEC sections 3-4 (only the abstract is public).

All of them run the anchor (the network output) through VGG19 with autograd, and the
positives and negatives under ``torch.no_grad()``, batched into one forward (VGG19 has no
batch-dependent layer, so batching does not change the features); the VGG weights never
receive a gradient. Images are used as given: no ImageNet normalisation, like the sources.

Dtypes (the ops' convention): images of any floating dtype are accepted; they are run through
VGG19 in the extractor's dtype (fp16/bf16 images with the default float32 VGG are computed in
float32, gradients flow back to the image in its own dtype), and the loss is a float32 0-d
tensor. Under CUDA autocast the convolutions run in autocast's dtype as usual. Images must be
RGB [B,3,H,W] (VGG19's input): a grey [B,1,H,W] image is a ValueError naming the argument
(replicate it with ``x.expand(-1, 3, -1, -1)``), as are images whose shapes differ.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .. import ops as _ops
from ..ops.contrastive import AECR_LAYER_WEIGHTS
from .vgg import VGG19Features

__all__ = ["ContrastLoss", "C2RLoss", "IICLLoss"]


def _image(x, name, like=None, dtype=None):
    """Check an image argument ([B,3,H,W] floating, the shape of ``like``) and cast it to ``dtype``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"{name} must be a floating [B,C,H,W] image tensor, got "
                         f"{(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[1] != 3:
        raise ValueError(f"{name} must be an RGB image [B,3,H,W] (VGG19's input), got shape {tuple(x.shape)}; "
                         "replicate a grey image with x.expand(-1, 3, -1, -1)")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} must have the shape of the output/anchor {tuple(like.shape)}, got {tuple(x.shape)}")
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


class _VGGContrast(nn.Module):
    def __init__(self, vgg, weights, layer_weights, eps, ablation, backend, batch_no_grad):
        super().__init__()
        self.vgg = vgg if vgg is not None else VGG19Features(weights)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        if len(self.layer_weights) != self.vgg.slices:
            raise ValueError(f"layer_weights must hold one weight per VGG slice ({self.vgg.slices}), "
                             f"got {len(self.layer_weights)}")
        self.eps, self.ab, self.backend, self.batch_no_grad = float(eps), bool(ablation), backend, batch_no_grad

    def _dtype(self):
        """The VGG's parameter dtype: images are computed in it (see the module docstring)."""
        p = next(self.vgg.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def _no_grad_features(self, images: Sequence[torch.Tensor]) -> list:
        """Features of each image batch (same shapes), under no_grad; one forward when batching.
        Returns per image a list over layers; slices of one batched output are contiguous views."""
        with torch.no_grad():
            if self.batch_no_grad and len(images) > 1:
                feats = self.vgg(torch.cat(list(images), 0))
                sizes = [x.shape[0] for x in images]
                per_layer = [f.split(sizes, 0) for f in feats]
                return [[pl[i] for pl in per_layer] for i in range(len(images))]
            return [self.vgg(x) for x in images]


class ContrastLoss(_VGGContrast):
    """AECR-Net's contrastive regularisation: sum_l lambda_l d(a_l, p_l) / (d(a_l, n_l) + 1e-7).

    Call ``loss(a, p, n)`` with the network output ``a``, the clear image ``p`` and the hazy
    input ``n`` ([B,3,H,W], one shape); returns a 0-d tensor (float32 for half inputs). Gives
    AECR-Net's ``ContrastLoss.forward(a, p, n)`` numbers for the same input tensors and the same
    VGG weights (VGG19 relu1_1..relu5_1 features, lambda = 1/32, 1/16, 1/8, 1/4, 1, L1 means,
    p and n detached; ``ablation=True`` returns sum_l lambda_l d(a_l, p_l)).

    DCMPNet's ``CR_loss`` (CVPR 2024) deviates in two ways that are documented, not copied:
    (1) its relu5_1 features go through three randomly initialised, never-trained 1x1-conv MLP
    heads before the distance, and (2) its images are in [-1, 1] (here: whatever range the
    caller gives; AECR-Net and C2PNet use [0, 1]). Feed [-1, 1] images to reproduce (2).

    Args:
        ablation: the sources' ablation flag (no negatives).
        vgg: a :class:`VGG19Features` to use (share one between losses); default a new one
            loading ``weights``.
        weights: local VGG19 weights file for the new extractor (see :class:`VGG19Features`;
            without it the features are random and a warning says so).
        layer_weights: lambda_l (default AECR-Net's).
        eps: denominator epsilon (1e-7 as the sources).
        backend: backend of the fused op ("auto", "reference", "cpu", "cuda", "triton").
        batch_no_grad: run p and n through VGG in one batch (set False to halve that peak memory).
    """

    def __init__(self, ablation: bool = False, vgg: Optional[VGG19Features] = None, weights=None,
                 layer_weights=AECR_LAYER_WEIGHTS, eps: float = 1e-7, backend: str = "auto",
                 batch_no_grad: bool = True):
        super().__init__(vgg, weights, layer_weights, eps, ablation, backend, batch_no_grad)

    def forward(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        dt = self._dtype()
        a = _image(a, "a", dtype=dt)
        p = _image(p, "p", a, dt)
        fa = self.vgg(a)
        if self.ab:
            fp = self._no_grad_features([p])[0]
            return _ops.contrastive_loss(fa, fp, None, self.layer_weights, eps=self.eps, ablation=True,
                                         backend=self.backend)
        n = _image(n, "n", a, dt)
        fp, fn = self._no_grad_features([p, n])
        return _ops.contrastive_loss(fa, fp, [x[None] for x in fn], self.layer_weights, eps=self.eps,
                                     backend=self.backend)


class C2RLoss(_VGGContrast):
    """C2PNet's curricular contrastive regularisation: several negatives with weights w_k.

        loss = sum_l lambda_l d(a_l, p_l) / (sum_k w_k d(a_l, n_k,l) + eps)

    Call ``loss(a, p, negatives, negative_weights=None)``: ``negatives`` a sequence of K images
    or a [K,B,3,H,W] tensor (e.g. the hazy input and other dehazers' outputs, the curriculum's
    easy/hard negatives); ``negative_weights`` K non-negative weights, which C2PNet sets from the
    current PSNR and which sum to 1 (default: the constructor's, else 1/K each). All negatives
    and the positive go through VGG in one no_grad batch.

    Args: as :class:`ContrastLoss`, plus ``negative_weights`` (default weights).
    Raises: ValueError for bad images, zero negatives or a wrong number of weights.
    """

    def __init__(self, negative_weights=None, ablation: bool = False, vgg: Optional[VGG19Features] = None,
                 weights=None, layer_weights=AECR_LAYER_WEIGHTS, eps: float = 1e-7, backend: str = "auto",
                 batch_no_grad: bool = True):
        super().__init__(vgg, weights, layer_weights, eps, ablation, backend, batch_no_grad)
        self.negative_weights = None if negative_weights is None else tuple(float(w) for w in negative_weights)

    def forward(self, a, p, negatives, negative_weights=None):
        dt = self._dtype()
        a = _image(a, "a", dtype=dt)
        p = _image(p, "p", a, dt)
        negs = list(negatives.unbind(0)) if isinstance(negatives, torch.Tensor) else list(negatives)
        if not negs and not self.ab:
            raise ValueError("negatives must hold at least one negative image")
        negs = [_image(x, f"negatives[{k}]", a, dt) for k, x in enumerate(negs)]
        fa = self.vgg(a)
        if self.ab:
            fp = self._no_grad_features([p])[0]
            return _ops.contrastive_loss(fa, fp, None, self.layer_weights, eps=self.eps, ablation=True,
                                         backend=self.backend)
        K = len(negs)
        w = negative_weights if negative_weights is not None else self.negative_weights
        feats = self._no_grad_features([p] + negs)
        fp = feats[0]
        fn = [[feats[1 + k][l] for k in range(K)] for l in range(len(fa))]
        return _ops.contrastive_loss(fa, fp, fn, self.layer_weights, w, eps=self.eps, backend=self.backend)


class IICLLoss(_VGGContrast):
    """Inter + intra contrastive loss of the ICASSP 2023 progressive framework (our design, SPEC 3-4).

        L = L_inter + lambda_intra L_intra
        L_inter = sum_l lambda_l ratio_l(output, clear, hazy)             (whole images)
        L_intra = (L(bright patches) + L(dark patches)) / 2

    The k brightest and k darkest patch x patch windows (stride ``stride``) are ranked on the
    hazy input I with :func:`fastdehaze.ops.patch_brightness_rank`; the same corners are cut
    with :func:`fastdehaze.ops.gather_patches` from the output (anchor), the clear image
    (positive) and I (negative). A patch set's ratio takes the L1 means over all its B*k
    patches' features. The three terms are one fused ``contrastive_loss`` call over 15 layers.

    Call ``loss(output, clear, hazy)`` with [B,3,H,W] images (H, W >= patch).

    Args:
        lambda_intra: weight of L_intra (default 1).
        patch, stride, k, measure: ranking parameters (defaults 64, 64, 2, "luma": a 4x4 grid on
            256x256 crops; VGG19 relu5_1 of a 64-px patch is 4x4).
        others: as :class:`ContrastLoss`.
    Raises:
        ValueError: bad images, patch larger than the image, k above the number of patches.
    """

    def __init__(self, lambda_intra: float = 1.0, patch: int = 64, stride: Optional[int] = 64, k: int = 2,
                 measure: str = "luma", ablation: bool = False, vgg: Optional[VGG19Features] = None, weights=None,
                 layer_weights=AECR_LAYER_WEIGHTS, eps: float = 1e-7, backend: str = "auto",
                 batch_no_grad: bool = True):
        super().__init__(vgg, weights, layer_weights, eps, ablation, backend, batch_no_grad)
        self.lambda_intra, self.patch, self.stride, self.k, self.measure = float(lambda_intra), patch, stride, k, measure

    def patches(self, output, clear, hazy):
        """(anchor, positive, negative) patch batches [2*B*k, C, patch, patch]: the bright patches of
        every image first, then the dark ones."""
        rank = _ops.patch_brightness_rank(hazy.detach(), self.patch, self.stride, self.k, self.measure)
        corners = torch.cat([rank.bright_corner, rank.dark_corner], 1)  # [B, 2k, 2]
        B, C, k, P = output.shape[0], output.shape[1], self.k, self.patch

        def cut(x):
            g = _ops.gather_patches(x, corners, P)  # [B, 2k, C, P, P]
            return torch.cat([g[:, :k].reshape(B * k, C, P, P), g[:, k:].reshape(B * k, C, P, P)], 0)

        with torch.no_grad():
            pos, neg = cut(clear), cut(hazy)
        return cut(output), pos, neg

    def forward(self, output, clear, hazy):
        dt = self._dtype()
        output = _image(output, "output", dtype=dt)
        clear, hazy = _image(clear, "clear", output, dt), _image(hazy, "hazy", output, dt)
        a_patch, p_patch, n_patch = self.patches(output, clear, hazy)
        Bk = a_patch.shape[0] // 2
        fa = self.vgg(output)
        fa_patch = self.vgg(a_patch)
        if self.ab:
            fp, fp_patch = self._no_grad_features([clear])[0], self._no_grad_features([p_patch])[0]
        else:
            fp, fn = self._no_grad_features([clear, hazy])
            fp_patch, fn_patch = self._no_grad_features([p_patch, n_patch])
        anchors, positives, negatives = list(fa), list(fp), None if self.ab else [x[None] for x in fn]
        for half in (slice(0, Bk), slice(Bk, 2 * Bk)):  # bright, then dark
            anchors += [x[half] for x in fa_patch]
            positives += [x[half] for x in fp_patch]
            if not self.ab:
                negatives += [x[half][None] for x in fn_patch]
        lw = self.layer_weights
        lam = self.lambda_intra / 2
        weights = tuple(lw) + tuple(lam * w for w in lw) * 2
        return _ops.contrastive_loss(anchors, positives, negatives, weights, eps=self.eps, ablation=self.ab,
                                     backend=self.backend)
