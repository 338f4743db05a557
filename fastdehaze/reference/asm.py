"""Reference atmospheric scattering model (Koschmieder; as used by RESIDE, DCP, AOD-Net, C2PNet).

    I(x) = J(x) t(x) + A (1 - t(x)),    t(x) = exp(-beta d(x))
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
