"""Benchmarks of the atmospheric scattering model ops (SPEC section 1; issue 2 item 7).

    pytest benchmarks/bench_asm.py --benchmark-only --benchmark-columns=min,median,rounds

Cases (CPU, float32, one run, grouped per case so that the ratios come from one table), at
[1,3,256,256] and [8,3,512,512] with a one-channel t / depth / K map and [B,3,1,1] parameters:

* ``recover``: J = (I - A) / max(t, t0) + A (forward; and forward + backward at the large size);
* ``synthesize_haze`` from t, and from depth + beta (one fused pass: t is not written);
* ``transmission_from_depth``;
* ``recompose_k`` (AOD-Net).

Providers: ``fused`` (the C++ CPU kernel through the public op, ``backend="cpu"``), ``eager``
(the PyTorch formula as the papers' repositories write it, below) and ``compile``
(``torch.compile`` of that same eager function, warmed up before timing).
``gpu_cases(device, small)`` gives benchmarks/gpu_check.py the same cases on a GPU.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import Case, compiled, tensor_bytes

T0 = 0.1


# ---- the eager formulas, as public dehazing code writes them ---------------------------------

def eager_recover(I, t, A, t0=T0):
    # DCP repositories: J = (I - A) / max(t, t0) + A
    return (I - A) / torch.clamp(t, min=t0) + A


def eager_synthesize(J, t, A):
    # RESIDE-style synthesis: I = J t + A (1 - t)
    return J * t + A * (1 - t)


def eager_transmission(depth, beta):
    return torch.exp(-beta * depth)


def eager_synthesize_depth(J, depth, A, beta):
    t = torch.exp(-beta * depth)
    return J * t + A * (1 - t)


def eager_recompose_k(I, K, b=1.0):
    # AOD-Net: output = k * x - k + b
    return K * I - K + b


def eager_recover_fwd_bwd(I, t, A):
    J = eager_recover(I, t, A)
    return torch.autograd.grad(J, (I, t, A), torch.ones_like(J))


# ---- inputs -------------------------------------------------------------------------------------

SHAPES = [(1, 3, 256, 256), (8, 3, 512, 512)]


def make_inputs(shape, device="cpu", dtype=torch.float32, seed=0):
    B, C, H, W = shape
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*s, lo=0.0, hi=1.0):
        return (torch.rand(*s, generator=g) * (hi - lo) + lo).to(device=device, dtype=dtype)

    return {"img": r(B, C, H, W), "t": r(B, 1, H, W, lo=0.05, hi=1.0), "depth": r(B, 1, H, W, lo=0.0, hi=3.0),
            "K": r(B, 1, H, W, lo=-2.0, hi=2.0), "A": r(B, C, 1, 1, lo=0.7, hi=1.0),
            "beta": r(B, 1, 1, 1, lo=0.6, hi=1.8)}


def _label(shape):
    return "[" + ",".join(map(str, shape)) + "]"


def _ops():
    import fastdehaze.ops as ops
    return ops


# name -> (fused(ops, x, backend), eager(x)); x is the dict of make_inputs
CASES = {
    "recover": (lambda ops, x, be: ops.recover(x["img"], x["t"], x["A"], T0, backend=be),
                lambda x: eager_recover(x["img"], x["t"], x["A"])),
    "synthesize_haze_t": (lambda ops, x, be: ops.synthesize_haze(x["img"], x["A"], t=x["t"], backend=be),
                          lambda x: eager_synthesize(x["img"], x["t"], x["A"])),
    "synthesize_haze_depth": (lambda ops, x, be: ops.synthesize_haze(x["img"], x["A"], depth=x["depth"],
                                                                     beta=x["beta"], backend=be),
                              lambda x: eager_synthesize_depth(x["img"], x["depth"], x["A"], x["beta"])),
    "transmission_from_depth": (lambda ops, x, be: ops.transmission_from_depth(x["depth"], x["beta"], backend=be),
                                lambda x: eager_transmission(x["depth"], x["beta"])),
    "recompose_k": (lambda ops, x, be: ops.recompose_k(x["img"], x["K"], 1.0, backend=be),
                    lambda x: eager_recompose_k(x["img"], x["K"], 1.0)),
}


def min_bytes(name, x):
    """The fewest bytes a case moves: each input read once, the output written once."""
    img, m = tensor_bytes(x["img"]), tensor_bytes(x["t"])
    if name == "transmission_from_depth":
        return 2 * m
    return 2 * img + m


# ---- pytest-benchmark (CPU) ---------------------------------------------------------------------

_COMPILED = {}


def _compiled_eager(name):
    if name not in _COMPILED:
        eager = CASES[name][1]
        _COMPILED[name] = torch.compile(eager, dynamic=False)
    return _COMPILED[name]


@pytest.mark.parametrize("shape", SHAPES, ids=_label)
@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
@pytest.mark.parametrize("name", list(CASES))
def test_asm_cpu(benchmark, name, provider, shape):
    ops = _ops()
    x = make_inputs(shape)
    fused, eager = CASES[name]
    if provider == "fused":
        fn = lambda: fused(ops, x, "cpu")  # noqa: E731
    elif provider == "eager":
        fn = lambda: eager(x)  # noqa: E731
    else:
        c = _compiled_eager(name)
        c(x)  # compile + warm up before timing
        fn = lambda: c(x)  # noqa: E731
    benchmark.group = f"{name} f32 {_label(shape)}"
    benchmark.extra_info["GB"] = min_bytes(name, x) / 1e9
    benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_recover_fwd_bwd_cpu(benchmark, provider):
    """recover forward + backward (gradients to I, t, A) at [8,3,512,512]."""
    ops = _ops()
    x = make_inputs(SHAPES[-1])
    I, t, A = (x[k].clone().requires_grad_() for k in ("img", "t", "A"))
    if provider == "fused":
        def fn():
            J = ops.recover(I, t, A, T0, backend="cpu")
            return torch.autograd.grad(J, (I, t, A), torch.ones_like(J))
    elif provider == "eager":
        def fn():
            return eager_recover_fwd_bwd(I, t, A)
    else:
        c = torch.compile(eager_recover, dynamic=False)

        def fn():
            J = c(I, t, A)
            return torch.autograd.grad(J, (I, t, A), torch.ones_like(J))
        fn()
    benchmark.group = f"recover fwd+bwd f32 {_label(SHAPES[-1])}"
    benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=2)


# ---- GPU cases (benchmarks/gpu_check.py) ---------------------------------------------------------

def gpu_cases(device, small):
    """The cases above on ``device`` ("cuda", or "cpu" for gpu_check.py --cpu, where the C++
    CPU kernel stands in for "cuda"): [8,3,2048,2048] float32 (small: [1,3,64,96])."""
    ops = _ops()
    dev = torch.device(device)
    fused_b = "cuda" if dev.type == "cuda" else "cpu"
    shape = (1, 3, 64, 96) if small else (8, 3, 2048, 2048)
    x = make_inputs(shape, device=device)
    cases = []
    for name, (fused, eager) in CASES.items():
        c = compiled(eager)
        providers = {fused_b: (lambda f=fused: f(ops, x, fused_b)), "eager": (lambda e=eager: e(x)),
                     "compile": (lambda c=c: c(x))}
        if dev.type == "cuda" or _triton_cpu_ok():
            providers["triton"] = lambda f=fused: f(ops, x, "triton")
        cases.append(Case(f"{name} f32 {_label(shape)}", min_bytes(name, x), providers))
    return cases


def _triton_cpu_ok():
    import fastdehaze
    return fastdehaze.available_backends("cpu")["triton"]
