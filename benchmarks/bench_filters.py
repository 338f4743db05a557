"""Benchmarks of box_filter and guided_filter (SPEC section 2; issue 3 item 6).

    pytest benchmarks/bench_filters.py --benchmark-only --benchmark-columns=min,median,rounds

Cases (CPU, float32, grouped per case so that the ratios come from one table):

* ``box_filter`` r = 60 on a [1,1,2708,1800] map (a 4.9 MP photo) and on [8,3,512,512];
* ``guided_filter`` gray guide, r = 60, eps = 1e-3 (the DCP refinement) on the same sizes
  (guide [B,1,H,W], src [B,1|3,H,W]).

Providers: ``fused`` (C++ CPU kernel through the public op, ``backend="cpu"``), ``eager`` (the
cumsum box filter and guided filter as public PyTorch guided-filter code writes it, e.g.
DeepGuidedFilter's ``BoxFilter``/``GuidedFilter``: a float32 cumsum over the whole image,
normalised by the box filter of ones), ``compile`` (``torch.compile`` of that eager code, warmed
up before timing) and ``opencv`` (``cv2.boxFilter`` in float32 per channel, as OpenCV DCP code
writes the guided filter; its border rule is reflect-101, not the clipped mean: a speed baseline
only). ``gpu_cases(device, small)`` gives benchmarks/gpu_check.py the same cases on a GPU.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import Case, compiled, tensor_bytes

R, EPS = 60, 1e-3


# ---- the eager code, as public guided-filter code writes it ----------------------------------

def _diff_x(x, r):
    left = x[:, :, r:2 * r + 1]
    middle = x[:, :, 2 * r + 1:] - x[:, :, :-2 * r - 1]
    right = x[:, :, -1:] - x[:, :, -2 * r - 1:-r - 1]
    return torch.cat([left, middle, right], dim=2)


def _diff_y(x, r):
    left = x[:, :, :, r:2 * r + 1]
    middle = x[:, :, :, 2 * r + 1:] - x[:, :, :, :-2 * r - 1]
    right = x[:, :, :, -1:] - x[:, :, :, -2 * r - 1:-r - 1]
    return torch.cat([left, middle, right], dim=3)


def eager_box_sum(x, r):
    # DeepGuidedFilter's BoxFilter (needs H, W > 2r + 1)
    return _diff_y(_diff_x(x.cumsum(dim=2), r).cumsum(dim=3), r)


def eager_box_filter(x, r=R):
    N = eager_box_sum(torch.ones_like(x[:1, :1]), r)
    return eager_box_sum(x, r) / N


def eager_guided_filter(I, p, r=R, eps=EPS):
    # DeepGuidedFilter's GuidedFilter (gray guide broadcast over src channels)
    N = eager_box_sum(torch.ones_like(I[:1, :1]), r)
    mean_I = eager_box_sum(I, r) / N
    mean_p = eager_box_sum(p, r) / N
    cov_Ip = eager_box_sum(I * p, r) / N - mean_I * mean_p
    var_I = eager_box_sum(I * I, r) / N - mean_I * mean_I
    A = cov_Ip / (var_I + eps)
    b = mean_p - A * mean_I
    mean_A = eager_box_sum(A, r) / N
    mean_b = eager_box_sum(b, r) / N
    return mean_A * I + mean_b


def opencv_box_filter(x, r=R):
    import cv2
    a = x.numpy()
    out = torch.empty_like(x)
    o = out.numpy()
    for b in range(a.shape[0]):
        for c in range(a.shape[1]):
            o[b, c] = cv2.boxFilter(a[b, c], cv2.CV_32F, (2 * r + 1, 2 * r + 1))
    return out


def opencv_guided_filter(I, p, r=R, eps=EPS):
    # the usual OpenCV DCP guided filter (He's MATLAB code with cv2.boxFilter), per image/channel
    import cv2
    k = (2 * r + 1, 2 * r + 1)
    In, pn = I.numpy(), p.numpy()
    out = torch.empty_like(p)
    o = out.numpy()
    for b in range(pn.shape[0]):
        im = In[b, 0]
        mean_I = cv2.boxFilter(im, cv2.CV_32F, k)
        var_I = cv2.boxFilter(im * im, cv2.CV_32F, k) - mean_I * mean_I
        for c in range(pn.shape[1]):
            pc = pn[b, c]
            mean_p = cv2.boxFilter(pc, cv2.CV_32F, k)
            cov = cv2.boxFilter(im * pc, cv2.CV_32F, k) - mean_I * mean_p
            a = cov / (var_I + eps)
            bb = mean_p - a * mean_I
            o[b, c] = cv2.boxFilter(a, cv2.CV_32F, k) * im + cv2.boxFilter(bb, cv2.CV_32F, k)
    return out


# ---- inputs -------------------------------------------------------------------------------------

SHAPES = [(1, 1, 2708, 1800), (8, 3, 512, 512)]


def make_inputs(shape, device="cpu", seed=0):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(seed)
    # a smooth-ish guide (luma) and a transmission-like src
    return {"x": torch.rand(B, C, H, W, generator=g).to(device), "I": torch.rand(B, 1, H, W, generator=g).to(device),
            "p": torch.rand(B, C, H, W, generator=g).mul(0.9).add(0.1).to(device)}


def _label(shape):
    return "[" + ",".join(map(str, shape)) + "]"


def _ops():
    import fastdehaze.ops as ops
    return ops


CASES = {
    "box_filter r60": (lambda ops, x, be: ops.box_filter(x["x"], R, backend=be), lambda x: eager_box_filter(x["x"]),
                       lambda x: opencv_box_filter(x["x"])),
    "guided_filter gray r60": (lambda ops, x, be: ops.guided_filter(x["I"], x["p"], R, EPS, backend=be),
                               lambda x: eager_guided_filter(x["I"], x["p"]),
                               lambda x: opencv_guided_filter(x["I"], x["p"])),
}


def min_bytes(name, x):
    if name.startswith("box"):
        return 2 * tensor_bytes(x["x"])
    return tensor_bytes(x["I"]) + 2 * tensor_bytes(x["p"])


# ---- pytest-benchmark (CPU) ---------------------------------------------------------------------

_COMPILED = {}


def _compiled_eager(name):
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(CASES[name][1], dynamic=False)
    return _COMPILED[name]


@pytest.mark.parametrize("shape", SHAPES, ids=_label)
@pytest.mark.parametrize("provider", ["fused", "eager", "compile", "opencv"])
@pytest.mark.parametrize("name", list(CASES))
def test_filters_cpu(benchmark, name, provider, shape):
    ops = _ops()
    x = make_inputs(shape)
    fused, eager, ocv = CASES[name]
    if provider == "fused":
        fn = lambda: fused(ops, x, "cpu")  # noqa: E731
    elif provider == "eager":
        fn = lambda: eager(x)  # noqa: E731
    elif provider == "opencv":
        pytest.importorskip("cv2")
        fn = lambda: ocv(x)  # noqa: E731
    else:
        c = _compiled_eager(name)
        c(x)  # compile + warm up before timing
        fn = lambda: c(x)  # noqa: E731
    benchmark.group = f"{name} f32 {_label(shape)}"
    benchmark.extra_info["MP"] = shape[0] * shape[2] * shape[3] / 1e6
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)


# ---- GPU cases (benchmarks/gpu_check.py) ---------------------------------------------------------

def gpu_cases(device, small):
    """The cases above on ``device`` ("cuda", or "cpu" for gpu_check.py --cpu, where the C++ CPU
    kernel stands in for "cuda"): [1,1,2708,1800] and [8,3,512,512] float32 (small: [1,1,150,200])."""
    ops = _ops()
    dev = torch.device(device)
    fused_b = "cuda" if dev.type == "cuda" else "cpu"
    shapes = [(1, 1, 150, 200)] if small else SHAPES
    cases = []
    for shape in shapes:
        x = make_inputs(shape, device=device)
        for name, (fused, eager, _) in CASES.items():
            c = compiled(eager)
            providers = {fused_b: (lambda f=fused, x=x: f(ops, x, fused_b)), "eager": (lambda e=eager, x=x: e(x)),
                         "compile": (lambda c=c, x=x: c(x))}
            if dev.type == "cuda" or _triton_cpu_ok():
                providers["triton"] = lambda f=fused, x=x: f(ops, x, "triton")
            cases.append(Case(f"{name} f32 {_label(shape)}", min_bytes(name, x), providers))
    return cases


def _triton_cpu_ok():
    import fastdehaze
    return fastdehaze.available_backends("cpu")["triton"]
