"""Inference speed of the built-in models (issue 9 item 10).

    nice -n 10 python3 -m pytest benchmarks/bench_models.py --benchmark-only -q

CPU, float32, [1,3,256,256], eval mode under ``torch.no_grad``, grouped per model so that the
ratio comes from one table. Providers:

* ``fused``: the model as built, its fused ops on the C++ CPU kernels (``backend="cpu"``);
* ``reference``: the same weights with every ``backend`` attribute set to "reference" (the
  PyTorch reference ops of fastdehaze.reference).

A model without fused ops (UNet: convolutions only) times the same code twice: the pair shows
the noise. ``extra_info`` has MP/s (megapixels of input per second at the median), parameters
and MACs per megapixel (``fastdehaze.nn.bases.model_stats``). ProgressiveDehazer rows are added
when fastdehaze/nn/progressive.py is present (imported lazily; skipped otherwise).

``gpu_cases(device, small)`` gives benchmarks/gpu_check.py the same models on a GPU:
[4,3,512,512] float32 forward under no_grad (small: [1,3,64,96]); providers "cuda" (fused
backend of the device: CUDA C++, or the C++ CPU kernels in ``--cpu`` mode), "triton" (CUDA only)
and "eager" (reference ops).
"""
from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.common import Case, tensor_bytes

SHAPE = (1, 3, 256, 256)


def _progressive():
    try:
        from fastdehaze.nn.progressive import ProgressiveDehazer
    except ImportError:
        return None
    return ProgressiveDehazer


def model_factories() -> dict:
    """name -> zero-argument constructor of every built-in model benchmarked."""
    from fastdehaze.nn.bases import AODNet, UNet
    from fastdehaze.nn.depth_models import DepthGuidedBase
    out = {"AODNet": AODNet, "UNet": UNet, "DepthGuidedBase": DepthGuidedBase}
    PD = _progressive()
    if PD is not None:
        out["ProgressiveDehazer(AODNet)"] = lambda: PD(AODNet())
        out["ProgressiveDehazer(UNet)"] = lambda: PD(UNet())
    return out


def with_backend(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """A deep copy of ``model`` with every submodule's ``backend`` attribute set to ``backend``."""
    m = copy.deepcopy(model)
    for sub in m.modules():
        if isinstance(getattr(sub, "backend", None), str):
            sub.backend = backend
    return m


def _build(name, backend, device="cpu"):
    torch.manual_seed(0)
    return with_backend(model_factories()[name]().eval(), backend).to(device)


def _run(m, x):
    with torch.no_grad():
        return m(x)


def _names():
    try:
        return list(model_factories())
    except ImportError:  # pragma: no cover
        return []


@pytest.mark.parametrize("provider", ["fused", "reference"])
@pytest.mark.parametrize("name", _names())
def test_model_inference(benchmark, name, provider):
    from fastdehaze.nn.bases import model_stats
    m = _build(name, "cpu" if provider == "fused" else "reference")
    x = torch.rand(*SHAPE, generator=torch.Generator().manual_seed(0))
    benchmark.group = f"{name} inference {list(SHAPE)}"
    benchmark.pedantic(_run, args=(m, x), rounds=5, warmup_rounds=1, iterations=1)
    st = model_stats(m, SHAPE[2:])
    mp = SHAPE[0] * SHAPE[2] * SHAPE[3] / 1e6
    benchmark.extra_info.update(MP_per_s=round(mp / benchmark.stats.stats.median, 3), params=st["params"],
                                GMAC_per_MP=round(st["macs_per_mp"] / 1e9, 3),
                                receptive_field=int(getattr(m, "receptive_field", 0)))


# ---- GPU (benchmarks/gpu_check.py) ------------------------------------------------------------

def gpu_cases(device, small):
    """Inference of each built-in model on ``device`` ("cuda", or "cpu" for gpu_check.py --cpu,
    where the C++ CPU kernels stand in for "cuda"): [4,3,512,512] float32 (small: [1,3,64,96])."""
    dev = torch.device(device)
    fused_b = "cuda" if dev.type == "cuda" else "cpu"
    shape = (1, 3, 64, 96) if small else (4, 3, 512, 512)
    x = torch.rand(*shape, device=dev)
    label = "x".join(map(str, shape))
    cases = []
    for name in _names():
        provs = {"cuda": _build(name, fused_b, dev), "eager": _build(name, "reference", dev)}
        if dev.type == "cuda":
            provs["triton"] = _build(name, "triton", dev)
        cases.append(Case(f"{name} infer f32 [{label}]", tensor_bytes(x, x),
                          {k: (lambda m=m: _run(m, x)) for k, m in provs.items()}))
    return cases
