"""Reference atmospheric scattering model (Koschmieder; as used by RESIDE, DCP, AOD-Net, C2PNet).

    I(x) = J(x) t(x) + A (1 - t(x)),    t(x) = exp(-beta d(x))

These are the definitions every fused backend is tested against (in float64). Half inputs are
computed in float32 and returned in their dtype; autograd is PyTorch's. Parameters (A, beta,
t0, b) are a Python float or a tensor of shape 0-d, [B,1,1,1], [B,C,1,1] or [1,C,1,1].
"""
from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _p(v, dt):
    """A broadcastable parameter (float or tensor of shape 0-d/[B,1,1,1]/[B,C,1,1]/[1,C,1,1]) in dtype dt."""
    return v.to(dt) if isinstance(v, torch.Tensor) else float(v)


def recover(I, t, A, t0=0.1, clamp=None):
    """J = (I - A) / max(t, t0) + A (gradient w.r.t. t as torch.clamp; t0 is not differentiated)."""
    dt = compute_dtype(I)
    t0 = t0.detach() if isinstance(t0, torch.Tensor) else t0
    A_ = _p(A, dt)
    J = (I.to(dt) - A_) / torch.clamp(t.to(dt), min=_p(t0, dt)) + A_
    if clamp is not None:
        J = torch.clamp(J, float(clamp[0]), float(clamp[1]))
    return J.to(I.dtype)


def transmission_from_depth(depth, beta):
    """t = exp(-beta d) (Koschmieder), computed in the compute dtype and returned in depth's dtype.

    beta broadcasts against depth, so a one-channel depth with a [B,C,1,1] beta gives [B,C,H,W]."""
    dt = compute_dtype(depth)
    return torch.exp(-_p(beta, dt) * depth.to(dt)).to(depth.dtype)


def synthesize_haze(J, A, *, t=None, depth=None, beta=None):
    """I = J t + A (1 - t), with t given or t = exp(-beta depth) (exactly one of the two)."""
    if (t is not None and (depth is not None or beta is not None)) or (t is None and (depth is None or beta is None)):
        raise ValueError("give exactly one of t or (depth and beta)")
    dt = compute_dtype(J)
    tt = t.to(dt) if t is not None else torch.exp(-_p(beta, dt) * depth.to(dt))
    A_ = _p(A, dt)
    return (J.to(dt) * tt + A_ * (1 - tt)).to(J.dtype)


def recompose_k(I, K, b=1.0):
    """AOD-Net's recomposition J = K I - K + b (Li et al., ICCV 2017, eq. 4)."""
    dt = compute_dtype(I)
    Kd = K.to(dt)
    return (Kd * I.to(dt) - Kd + _p(b, dt)).to(I.dtype)
