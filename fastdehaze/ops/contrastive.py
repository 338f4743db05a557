"""Contrastive distance ops (SPEC section 4): the contrastive regularisation of AECR-Net
(Wu et al., "Contrastive Learning for Compact Single Image Dehazing", CVPR 2021,
``ContrastLoss``), C2PNet (Zheng et al., "Curricular Contrastive Regularization for
Physics-aware Single Image Dehazing", CVPR 2023, ``C2R``) and DCMPNet (Zhang et al., CVPR 2024,
``CR_loss``), and of the inter/intra contrastive learning (IICL) of the ICASSP 2023
progressive dehazing framework.

Per feature layer, with anchor a (features of the network output), positive p (of the clear
image) and negatives n_1..n_K (of the hazy input, and optionally other images)::

    d(x, y) = mean |x - y|                                  (nn.L1Loss, reduction 'mean')
    ratio   = d(a, p) / (sum_k w_k d(a, n_k) + eps)         (ablation mode: d(a, p))
    loss    = sum_l lambda_l ratio_l

Fused: one pass over a, p and all n_k computes every sum (float64 for float64 features;
otherwise float32, in blocked partial sums added in float64), and the backward is analytic,
to the anchor only::

    dL/da = g lambda / N [sign(a - p) / D - d(a, p) sum_k w_k sign(a - n_k) / D^2],
    D = sum_k w_k d(a, n_k) + eps,  sign(0) = 0

with no |a - p| or |a - n| temporaries of the feature size. On the C++ CPU path, when an anchor
needs a gradient, the forward also packs sign(a - p) and every sign(a - n_k) into 2 bits per
pair and element ((1 + K) / 4 bytes per element) and the backward reads those bits instead of
a, p and every n_k again: a step's 2 (2 + K) feature-size reads and one gradient write become
(2 + K) reads, one write and (1 + K) / 8 of a float32 pass for the signs; and the positives' and
negatives' features are not kept alive for the backward. Positives and negatives are
detached (as in all three sources); negative and layer weights are constants. The layers of
one ``contrastive_loss`` call are one op: one kernel launch over all layers on CUDA C++, one
parallel loop on the CPU, one launch per layer (no synchronisation) in Triton.

Dtypes: float16/bfloat16/float32/float64. Features of one layer with different dtypes (under
autocast: a bf16 anchor from the network, fp32 positives/negatives computed outside it) are
promoted to one dtype with ``torch.promote_types``; the anchor's gradient comes back in the
anchor's own dtype. The
result is a 0-d float32 tensor for half and float32 features (a ratio near 1/eps = 1e7 does
not fit fp16; autocast likewise returns l1_loss in float32) and float64 for float64.
Layouts: any strides; a dense anchor (e.g. channels_last) is read in place, and positives or
negatives with other strides are copied once into the anchor's layout. Empty features give
NaN, like nn.L1Loss. Autocast: the op runs in the features' dtype.

Determinism (Triton backend): bitwise the same on every run: each program's partial sums go to
its own row of a float64 table that torch sums in a fixed order (no float atomics).
"""
from __future__ import annotations

import math
import numbers

import torch

from ..reference import contrastive as _ref
from ._dispatch import FusedOp, compute_dtype, resolve_backend

__all__ = ["contrastive_distance", "contrastive_loss", "release_cpu_cache", "AECR_LAYER_WEIGHTS"]

FAMILY = "contrastive"

#: lambda_l of AECR-Net / C2PNet / DCMPNet for VGG19 relu1_1 .. relu5_1.
AECR_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


# ---- registered ops ---------------------------------------------------------------------------

def _distance_fake(anchor, positive, negatives, w, eps, ablation):
    return w.new_empty(()), w.new_empty((1, 1 + len(negatives)))


def _distance_backward_fake(grad, anchor, positive, negatives, w, dists, eps, ablation):
    return torch.empty_like(anchor)


def _distance_setup(ctx, inputs, output):
    anchor, positive, negatives, w, eps, ablation = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(anchor, positive, w, output[1], *negatives)
    ctx.args = (eps, ablation)


def _distance_backward(ctx, backward_op, grad, _grad_dists):
    anchor, positive, w, dists, *negatives = ctx.saved_tensors
    ga = backward_op(grad, anchor, positive, list(negatives), w, dists, *ctx.args)
    return ga, None, [None] * len(negatives), None, None, None


_distance = FusedOp(
    "contrastive_distance", FAMILY,
    "(Tensor anchor, Tensor positive, Tensor[] negatives, Tensor negative_weights, float eps, bool ablation) "
    "-> (Tensor, Tensor)",
    fake=_distance_fake,
    backward_schema="(Tensor grad, Tensor anchor, Tensor positive, Tensor[] negatives, Tensor negative_weights, "
                    "Tensor dists, float eps, bool ablation) -> Tensor",
    backward_fake=_distance_backward_fake,
    setup_context=_distance_setup, backward=_distance_backward)


def _loss_fake(anchors, positives, negatives, lw, w, eps, ablation):
    return w.new_empty(()), w.new_empty((len(anchors), 1 + len(negatives) // len(anchors)))


def _loss_backward_fake(grad, anchors, positives, negatives, lw, w, dists, eps, ablation):
    return [torch.empty_like(a) for a in anchors]


def _loss_setup(ctx, inputs, output):
    anchors, positives, negatives, lw, w, eps, ablation = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(lw, w, output[1], *anchors, *positives, *negatives)
    ctx.args = (len(anchors), eps, ablation)


def _loss_backward(ctx, backward_op, grad, _grad_dists):
    L, eps, ablation = ctx.args
    lw, w, dists, *feats = ctx.saved_tensors
    grads = backward_op(grad, feats[:L], feats[L:2 * L], feats[2 * L:], lw, w, dists, eps, ablation)
    nn = len(feats) - 2 * L
    return list(grads), [None] * L, [None] * nn, None, None, None, None


_loss = FusedOp(
    "contrastive_loss", FAMILY,
    "(Tensor[] anchors, Tensor[] positives, Tensor[] negatives, Tensor layer_weights, Tensor negative_weights, "
    "float eps, bool ablation) -> (Tensor, Tensor)",
    fake=_loss_fake,
    backward_schema="(Tensor grad, Tensor[] anchors, Tensor[] positives, Tensor[] negatives, Tensor layer_weights, "
                    "Tensor negative_weights, Tensor dists, float eps, bool ablation) -> Tensor[]",
    backward_fake=_loss_backward_fake,
    setup_context=_loss_setup, backward=_loss_backward)


def _signs_fake(anchors, positives, negatives, lw, w, eps, ablation):
    K = len(negatives) // len(anchors)
    planes = 1 if ablation else 1 + K
    entries = sum(planes * ((a.numel() + 15) // 16) for a in anchors)
    return (w.new_empty(()), w.new_empty((len(anchors), 1 + K)),
            anchors[0].new_empty((entries,), dtype=torch.int32))


def _signs_backward_fake(grad, anchors, lw, w, dists, signs, eps, ablation):
    return [torch.empty_like(a) for a in anchors]


def _signs_setup(ctx, inputs, output):
    anchors, positives, negatives, lw, w, eps, ablation = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(lw, w, output[1], output[2], *anchors)  # not the positives and negatives
    ctx.args = (len(positives), len(negatives), eps, ablation)


def _signs_backward(ctx, backward_op, grad, _grad_dists, _grad_signs):
    L, nn, eps, ablation = ctx.args
    lw, w, dists, signs, *anchors = ctx.saved_tensors
    grads = backward_op(grad, anchors, lw, w, dists, signs, eps, ablation)
    return list(grads), [None] * L, [None] * nn, None, None, None, None


# contrastive_loss with the packed signs (C++ CPU only; see the module docstring).
_loss_signs = FusedOp(
    "contrastive_loss_signs", FAMILY,
    "(Tensor[] anchors, Tensor[] positives, Tensor[] negatives, Tensor layer_weights, Tensor negative_weights, "
    "float eps, bool ablation) -> (Tensor, Tensor, Tensor)",
    fake=_signs_fake,
    backward_schema="(Tensor grad, Tensor[] anchors, Tensor layer_weights, Tensor negative_weights, Tensor dists, "
                    "Tensor signs, float eps, bool ablation) -> Tensor[]",
    backward_fake=_signs_backward_fake,
    setup_context=_signs_setup, backward=_signs_backward, cpu_only=True)


def release_cpu_cache() -> int:
    """Free the memory the C++ CPU contrastive kernels keep for reuse; returns the bytes freed.

    Their large outputs (anchor gradients and packed signs of 4 MiB or more) come from a cache
    of 2 MiB-aligned blocks so that the next training step, which asks for the same sizes,
    does not pay page faults on fresh memory (csrc/include/fastdehaze/output_cache.h). The
    cache holds at most ``FASTDEHAZE_CPU_CACHE_MB`` megabytes of freed blocks (read once per
    process; default 512, 0 disables it). Returns 0 when the C++ extension is not loaded.
    """
    if _loss.native is None:
        return 0
    return int(torch.ops.fastdehaze.contrastive_release_cache())


def _packs_signs(backend: str, anchors) -> bool:
    """Whether to run the packed-signs variant: the C++ CPU backend and an anchor needing a gradient."""
    return backend == "cpu" and torch.is_grad_enabled() and any(a.requires_grad for a in anchors)


# ---- argument checks --------------------------------------------------------------------------

def _feature(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    return x


def _like(x, name: str, anchor: torch.Tensor, anchor_name: str) -> torch.Tensor:
    _feature(x, name)
    if x.shape != anchor.shape:
        raise ValueError(f"{name} must have the shape of {anchor_name} {tuple(anchor.shape)}, got {tuple(x.shape)}")
    if x.dtype != anchor.dtype:
        raise TypeError(f"{name} must have the dtype of {anchor_name} ({anchor.dtype}), got {x.dtype}")
    if x.device != anchor.device:
        raise ValueError(f"{name} is on {x.device} but {anchor_name} is on {anchor.device}")
    return x


def _promoted(anchor, positive, negatives):
    """Autocast mixes dtypes: a bf16/fp16 anchor (the network's features) with fp32 positives and
    negatives computed outside autocast (bug-case row 34). Floating features of different dtypes
    are promoted to one dtype (``torch.promote_types``); the anchor's cast is differentiable, so
    its gradient comes back in its own dtype. Anything else is left for the checks to reject."""
    ts = [anchor, positive] + (list(negatives) if isinstance(negatives, (list, tuple)) else [negatives])
    ts = [t for t in ts if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not ts or all(t.dtype == ts[0].dtype for t in ts):
        return anchor, positive, negatives
    dt = ts[0].dtype
    for t in ts[1:]:
        dt = torch.promote_types(dt, t.dtype)

    def cast(t):
        return t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    negatives = [cast(n) for n in negatives] if isinstance(negatives, (list, tuple)) else cast(negatives)
    return cast(anchor), cast(positive), negatives


def _negatives(negatives, anchor: torch.Tensor, name: str, anchor_name: str) -> list:
    """negatives as a list of K detached tensors shaped like the anchor (K >= 1)."""
    if isinstance(negatives, torch.Tensor):
        _feature(negatives, name)
        if negatives.dim() != anchor.dim() + 1 or negatives.shape[1:] != anchor.shape:
            raise ValueError(f"{name} must be [K, *{anchor_name}.shape] = [K, {', '.join(map(str, anchor.shape))}] "
                             f"or a sequence of K tensors, got shape {tuple(negatives.shape)}")
        _like(negatives[0] if negatives.shape[0] else negatives.new_empty(anchor.shape), name, anchor, anchor_name)
        negs = list(negatives.detach().unbind(0))
    elif isinstance(negatives, (list, tuple)):
        negs = [_like(n, f"{name}[{k}]", anchor, anchor_name).detach() for k, n in enumerate(negatives)]
    else:
        raise TypeError(f"{name} must be a tensor [K, *{anchor_name}.shape] or a sequence of tensors, "
                        f"got {type(negatives).__name__}")
    if not negs:
        raise ValueError(f"{name} must hold at least one negative (K >= 1), got none")
    return negs


_weight_cache: dict = {}


def _vector(values, name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A constant weight vector (sequence of floats or 1-D tensor of length n) as a [n] tensor of dtype."""
    if isinstance(values, torch.Tensor):
        if not values.is_floating_point():
            raise TypeError(f"{name} must be floating-point, got {values.dtype}")
        if values.dim() != 1 or values.numel() != n:
            raise ValueError(f"{name} must hold {n} values, got shape {tuple(values.shape)}")
        if values.device != device:
            raise ValueError(f"{name} is on {values.device} but the features are on {device}")
        if (values.device.type == "cpu" and not torch.compiler.is_compiling()
                and bool((~torch.isfinite(values) | (values < 0)).any())):
            raise ValueError(f"{name} must be finite and >= 0")
        return values.detach().to(dtype).contiguous()
    try:
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of floats or a 1-D tensor, got {values!r}") from None
    if len(vals) != n:
        raise ValueError(f"{name} must hold {n} values (one per {'layer' if 'layer' in name else 'negative'}), "
                         f"got {len(vals)}")
    if not all(math.isfinite(v) and v >= 0 for v in vals):
        raise ValueError(f"{name} must be finite and >= 0, got {vals}")
    if torch.compiler.is_compiling():
        return torch.tensor(vals, dtype=dtype, device=device)
    key = (vals, dtype, device)
    t = _weight_cache.get(key)
    if t is None:
        if len(_weight_cache) > 256:
            _weight_cache.clear()
        t = _weight_cache[key] = torch.tensor(vals, dtype=dtype, device=device)
    return t


def _scalars(eps, ablation):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not isinstance(ablation, bool):
        raise TypeError(f"ablation must be a bool, got {type(ablation).__name__}")
    return float(eps), ablation


def _default_weights(negative_weights, K):
    return (1.0 / K,) * K if negative_weights is None else negative_weights


# ---- public functions -------------------------------------------------------------------------

def contrastive_distance(anchor, positive, negatives=None, negative_weights=None, eps=1e-7, ablation=False, *,
                         backend="auto"):
    """Contrastive ratio of one feature layer (SPEC section 4; AECR-Net CVPR 2021, C2PNet CVPR 2023).

        ratio = d(a, p) / (sum_k w_k d(a, n_k) + eps),    d(x, y) = mean |x - y|

    Args:
        anchor: features of the network output, any shape (e.g. [B,C,H,W]), float16/bfloat16/
            float32/float64. The only input that receives a gradient.
        positive: features of the clear image, the anchor's shape, dtype and device (detached).
        negatives: a [K, *anchor.shape] tensor or a sequence of K tensors shaped like the anchor
            (detached), K >= 1. May be None only with ``ablation=True``.
        negative_weights: K non-negative constants w_k, a sequence of floats or a 1-D tensor.
            Default (our choice): 1 / K each, so 1 for a single negative (AECR-Net, DCMPNet) and
            weights summing to 1 for several (as C2PNet's curricular weights do).
        eps: added to the denominator (default 1e-7, as the sources); >= 0.
        ablation: return d(a, p) only (the sources' ``ablation`` flag); negatives are not read.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        0-d tensor: float32 for half and float32 features, float64 for float64. a == n gives
        the finite d(a, p) / eps; NaN in any input gives NaN.

    Raises:
        TypeError: a non-tensor or non-floating feature, a non-float eps or non-bool ablation.
        ValueError: a shape differing from the anchor's, zero negatives, a wrong number of,
            negative or non-finite weights, eps < 0 or NaN, features on different devices.
        RuntimeError: the requested backend is unavailable for the anchor's device.
    """
    _feature(anchor, "anchor")
    anchor, positive, negatives = _promoted(anchor, positive, negatives)
    _like(positive, "positive", anchor, "anchor")
    eps, ablation = _scalars(eps, ablation)
    negs = [] if (ablation and negatives is None) else _negatives(negatives, anchor, "negatives", "anchor")
    b = resolve_backend(backend, FAMILY, anchor.device)
    if b == "reference":
        return _ref.contrastive_distance(anchor, positive, negs, negative_weights, eps, ablation)
    cdt = compute_dtype(anchor.dtype)
    if ablation:
        negs = []
    w = _vector(_default_weights(negative_weights, len(negs)) if negs else (), "negative_weights", len(negs), cdt,
                anchor.device)
    if _packs_signs(b, [anchor]):
        lw = _vector((1.0,), "layer_weights", 1, cdt, anchor.device)
        return _loss_signs(b, [anchor], [positive.detach()], negs, lw, w, eps, ablation)[0]
    return _distance(b, anchor, positive.detach(), negs, w, eps, ablation)[0]


def contrastive_loss(anchors, positives, negatives=None, layer_weights=AECR_LAYER_WEIGHTS, negative_weights=None,
                     eps=1e-7, ablation=False, *, backend="auto"):
    """Contrastive regularisation over feature layers: sum_l lambda_l ratio_l (SPEC section 4).

    AECR-Net's ``ContrastLoss`` on given features (VGG19 relu1_1..relu5_1 with lambda =
    1/32, 1/16, 1/8, 1/4, 1); C2PNet's ``C2R`` with several weighted negatives. All layers are
    computed by one fused op (see the module docstring).

    Args:
        anchors: sequence of L >= 1 feature tensors of the network output (any shapes, one
            dtype and device for all). Receive the gradient.
        positives: sequence of L tensors, positives[l] shaped like anchors[l] (detached).
        negatives: sequence of L items; negatives[l] is a [K, *anchors[l].shape] tensor or a
            sequence of K tensors shaped like anchors[l]; the same K >= 1 for every layer
            (detached). May be None only with ``ablation=True``.
        layer_weights: L non-negative constants lambda_l (default AECR-Net's five weights).
        negative_weights: K non-negative constants shared by the layers; default 1/K each.
        eps: added to every denominator (default 1e-7); >= 0.
        ablation: sum_l lambda_l d(a_l, p_l) (no negatives read).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        0-d tensor: float32 for half and float32 features, float64 for float64.

    Raises:
        TypeError: non-sequence arguments, non-tensor or non-floating features, anchors of
            different dtypes after promotion within each layer.
        ValueError: mismatched numbers of layers or weights, shapes differing from the anchor
            of the layer, zero negatives or K varying across layers, negative or non-finite
            weights, eps < 0 or NaN, features on different devices.
        RuntimeError: the requested backend is unavailable for the anchors' device.
    """
    if isinstance(anchors, torch.Tensor) or not isinstance(anchors, (list, tuple)):
        raise TypeError(f"anchors must be a sequence of tensors (one per layer), got {type(anchors).__name__}")
    if not anchors:
        raise ValueError("anchors must hold at least one layer")
    if isinstance(positives, torch.Tensor) or not isinstance(positives, (list, tuple)):
        raise TypeError(f"positives must be a sequence of tensors (one per layer), got {type(positives).__name__}")
    L = len(anchors)
    if len(positives) != L:
        raise ValueError(f"positives must hold one tensor per layer ({L}), got {len(positives)}")
    eps, ablation = _scalars(eps, ablation)
    if negatives is None or (isinstance(negatives, (list, tuple)) and len(negatives) == L):
        promoted = [_promoted(anchors[l], positives[l], None if negatives is None else negatives[l]) for l in range(L)]
        anchors = [a for a, _, _ in promoted]
        positives = [q for _, q, _ in promoted]
        if negatives is not None:
            negatives = [n for _, _, n in promoted]
    a0 = _feature(anchors[0], "anchors[0]")
    for l in range(L):
        a = _feature(anchors[l], f"anchors[{l}]")
        if a.dtype != a0.dtype:
            raise TypeError(f"anchors[{l}] must have the dtype of anchors[0] ({a0.dtype}), got {a.dtype}")
        if a.device != a0.device:
            raise ValueError(f"anchors[{l}] is on {a.device} but anchors[0] is on {a0.device}")
        _like(positives[l], f"positives[{l}]", a, f"anchors[{l}]")
    if ablation and negatives is None:
        negs = [[] for _ in range(L)]
    else:
        if isinstance(negatives, torch.Tensor) or not isinstance(negatives, (list, tuple)):
            raise TypeError(f"negatives must be a sequence (one item per layer), got {type(negatives).__name__}")
        if len(negatives) != L:
            raise ValueError(f"negatives must hold one item per layer ({L}), got {len(negatives)}")
        negs = [_negatives(negatives[l], anchors[l], f"negatives[{l}]", f"anchors[{l}]") for l in range(L)]
        K = len(negs[0])
        for l in range(L):
            if len(negs[l]) != K:
                raise ValueError(f"negatives[{l}] must hold K={K} negatives like negatives[0], got {len(negs[l])}")
    if isinstance(layer_weights, torch.Tensor):
        if layer_weights.dim() != 1 or layer_weights.numel() != L:
            raise ValueError(f"layer_weights must hold one weight per layer ({L}), got shape "
                             f"{tuple(layer_weights.shape)}")
    elif not isinstance(layer_weights, (list, tuple)) or len(layer_weights) != L:
        raise ValueError(f"layer_weights must hold one weight per layer ({L}), got {layer_weights!r}")
    b = resolve_backend(backend, FAMILY, a0.device)
    cdt = compute_dtype(a0.dtype)
    lw = _vector(layer_weights, "layer_weights", L, cdt, a0.device)
    if b == "reference":
        return _ref.contrastive_loss(anchors, positives, negs, layer_weights, negative_weights, eps, ablation)
    K = 0 if ablation else len(negs[0])
    w = _vector(_default_weights(negative_weights, K) if K else (), "negative_weights", K, cdt, a0.device)
    flat = [n for layer in negs for n in layer] if K else []
    op = _loss_signs if _packs_signs(b, anchors) else _loss
    return op(b, list(anchors), [p.detach() for p in positives], flat, lw, w, eps, ablation)[0]
