"""Benchmarks of the dark channel prior ops (SPEC section 2; issue 3 item 6).

    pytest benchmarks/bench_dcp.py --benchmark-only --benchmark-columns=min,median,rounds

Cases (CPU, one run, grouped so the ratios come from one table):

* ``dcp-4.9MP``: the whole DCP dehazing of the 2708x1800 photo
  ../shared/data/pairs/xjtu_videohazy/hazy/test_200001.jpg (skipped when absent; read with
  Pillow) and ``dcp-620x460`` (a SOTS-sized random image): providers ``fused`` (the C++
  ``dehaze_dcp``), ``eager`` (the PyTorch DCP as public repos write it: channel min +
  ``F.max_pool2d`` min filter, top-k for A, cumsum box filter, gray guided filter), ``compile``
  (``torch.compile`` of that eager code, warmed up first) and ``opencv`` (``cv2.erode`` dark
  channel, ``np.argsort`` for A as the usual OpenCV DCP code does, ``cv2.boxFilter`` guided
  filter; float32; needs opencv-python-headless).
* each op alone at 4.9 MP: dark channel, atmospheric light, transmission (fused vs eager vs
  compile).

Megapixels per second = H*W / median time (pytest-benchmark's ``extra_info['MP']`` holds H*W/1e6).
``gpu_cases(device, small)`` gives benchmarks/gpu_check.py the same cases on a GPU.
"""
from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import Case, compiled, data_dir, tensor_bytes

PHOTO = "pairs/xjtu_videohazy/hazy/test_200001.jpg"
PATCH, OMEGA, TOP, R, EPS, T0 = 15, 0.95, 0.001, 60, 1e-3, 0.1


# ---- the eager PyTorch DCP, as public DCP repositories write it -------------------------------

def eager_dark_channel(I, patch=PATCH):
    m = torch.min(I, dim=1, keepdim=True).values
    return -F.max_pool2d(-m, patch, stride=1, padding=patch // 2)


def eager_atmospheric_light(I, dark, top=TOP):
    B, C, H, W = I.shape
    k = max(1, int(H * W * top))
    idx = torch.topk(dark.reshape(B, -1), k, dim=1).indices
    return torch.gather(I.reshape(B, C, -1), 2, idx.unsqueeze(1).expand(B, C, k)).mean(2).reshape(B, C, 1, 1)


def eager_transmission(I, A, omega=OMEGA, patch=PATCH):
    return 1 - omega * eager_dark_channel(I / A, patch)


def eager_box(x, r):
    # He's boxfilter with cumulative sums, then divided by the pixel count N = box(ones)
    def diff(c, dim, n):
        c = torch.cumsum(c, dim)
        pad = [0, 0, 0, 0]
        if dim == 2:
            left = c.narrow(2, r, r + 1)
            mid = c.narrow(2, 2 * r + 1, n - 2 * r - 1) - c.narrow(2, 0, n - 2 * r - 1)
            right = c.narrow(2, n - 1, 1) - c.narrow(2, n - 2 * r - 1, r)
            return torch.cat([left, mid, right], 2)
        left = c.narrow(3, r, r + 1)
        mid = c.narrow(3, 2 * r + 1, n - 2 * r - 1) - c.narrow(3, 0, n - 2 * r - 1)
        right = c.narrow(3, n - 1, 1) - c.narrow(3, n - 2 * r - 1, r)
        del pad
        return torch.cat([left, mid, right], 3)
    H, W = x.shape[-2:]
    return diff(diff(x, 2, H), 3, W)


def eager_guided_filter(I, p, r=R, eps=EPS):
    N = eager_box(torch.ones_like(I), r)
    mI, mp = eager_box(I, r) / N, eager_box(p, r) / N
    cov = eager_box(I * p, r) / N - mI * mp
    var = eager_box(I * I, r) / N - mI * mI
    a = cov / (var + eps)
    b = mp - a * mI
    return (eager_box(a, r) / N) * I + eager_box(b, r) / N


def eager_dcp(I):
    dark = eager_dark_channel(I)
    A = eager_atmospheric_light(I, dark)
    t = eager_transmission(I, A)
    gray = 0.299 * I[:, 0:1] + 0.587 * I[:, 1:2] + 0.114 * I[:, 2:3]
    t = torch.clamp(eager_guided_filter(gray, t), T0, 1)
    return torch.clamp((I - A) / t + A, 0, 1)


# ---- OpenCV DCP (float32 numpy, HWC) -------------------------------------------------------

def opencv_dcp(img):
    import cv2
    import numpy as np
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (PATCH, PATCH))
    dark = cv2.erode(img.min(axis=2), kernel)
    H, W = dark.shape
    k = max(1, int(H * W * TOP))
    idx = dark.reshape(-1).argsort()[-k:]
    A = img.reshape(-1, 3)[idx].mean(axis=0)
    t = 1 - OMEGA * cv2.erode((img / A).min(axis=2), kernel)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)

    def box(x):
        return cv2.boxFilter(x, cv2.CV_32F, (2 * R + 1, 2 * R + 1))  # normalised, reflected border
    mI, mp = box(gray), box(t)
    a = (box(gray * t) - mI * mp) / (box(gray * gray) - mI * mI + EPS)
    b = mp - a * mI
    t = np.clip(box(a) * gray + box(b), T0, 1)
    return np.clip((img - A) / t[..., None] + A, 0, 1)


# ---- inputs ------------------------------------------------------------------------------

def _photo():
    d = data_dir()
    p = d / PHOTO if d is not None else None
    if p is None or not p.is_file():
        pytest.skip(f"{PHOTO} not found under ../shared/data")
    from PIL import Image
    import numpy as np
    a = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


@pytest.fixture(scope="module")
def photo():
    return _photo()


@pytest.fixture(scope="module")
def small():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 460, 620, generator=g)


_compiled = {}


def _comp(name, fn):
    if name not in _compiled:
        _compiled[name] = compiled(fn)
    return _compiled[name]


def _run(benchmark, provider, I, group):
    import fastdehaze.ops as ops
    benchmark.extra_info["MP"] = I.shape[2] * I.shape[3] / 1e6
    if provider == "fused":
        fn = lambda: ops.dehaze_dcp(I, backend="cpu")  # noqa: E731
    elif provider == "eager":
        fn = lambda: eager_dcp(I)  # noqa: E731
    elif provider == "compile":
        c = _comp("dcp", eager_dcp)
        c(I)  # warm up (compile) before timing
        fn = lambda: c(I)  # noqa: E731
    else:
        pytest.importorskip("cv2")
        img = I[0].permute(1, 2, 0).contiguous().numpy()
        fn = lambda: opencv_dcp(img)  # noqa: E731
    fn()
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=0)


PROVIDERS = ["fused", "eager", "compile", "opencv"]


@pytest.mark.benchmark(group="dcp-4.9MP")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_dcp_photo(benchmark, provider, photo):
    _run(benchmark, provider, photo, "dcp-4.9MP")


@pytest.mark.benchmark(group="dcp-620x460")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_dcp_small(benchmark, provider, small):
    _run(benchmark, provider, small, "dcp-620x460")


def _op_fns(I):
    import fastdehaze.ops as ops
    dark = eager_dark_channel(I)
    A = eager_atmospheric_light(I, dark)
    return {
        "dark_channel": (lambda: ops.dark_channel(I, backend="cpu"), lambda x: eager_dark_channel(x), (I,)),
        "atmospheric_light": (lambda: ops.atmospheric_light(I, dark, backend="cpu"),
                              lambda x, d: eager_atmospheric_light(x, d), (I, dark)),
        "transmission": (lambda: ops.transmission(I, A, backend="cpu"), lambda x, a: eager_transmission(x, a), (I, A)),
    }


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
@pytest.mark.parametrize("op", ["dark_channel", "atmospheric_light", "transmission"])
def test_op_photo(benchmark, op, provider, photo):
    benchmark.group = f"{op}-4.9MP"
    benchmark.extra_info["MP"] = photo.shape[2] * photo.shape[3] / 1e6
    fused, eager, args = _op_fns(photo)[op]
    if provider == "fused":
        fn = fused
    elif provider == "eager":
        fn = lambda: eager(*args)  # noqa: E731
    else:
        c = _comp(op, eager)
        c(*args)
        fn = lambda: c(*args)  # noqa: E731
    fn()
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=0)


# ---- GPU cases (benchmarks/gpu_check.py) ----------------------------------------------------

def gpu_cases(device, small):
    import fastdehaze.ops as ops
    H, W = (160, 200) if small else (1800, 2708)
    g = torch.Generator(device="cpu").manual_seed(0)
    I = torch.rand(1, 3, H, W, generator=g).to(device)
    fused_b = "cuda" if torch.device(device).type == "cuda" else "cpu"
    dark = eager_dark_channel(I)
    A = eager_atmospheric_light(I, dark)
    cases = []
    img_b, map_b = tensor_bytes(I), tensor_bytes(dark)
    c_dark, c_A, c_t, c_dcp = (compiled(eager_dark_channel), compiled(eager_atmospheric_light),
                               compiled(eager_transmission), compiled(eager_dcp))
    cases.append(Case(f"dark_channel f32 [1,3,{H},{W}]", img_b + map_b, {
        fused_b: lambda: ops.dark_channel(I, backend=fused_b), "triton": lambda: ops.dark_channel(I, backend="triton"),
        "eager": lambda: eager_dark_channel(I), "compile": lambda: c_dark(I)}))
    cases.append(Case(f"atmospheric_light f32 [1,3,{H},{W}]", img_b + map_b, {
        fused_b: lambda: ops.atmospheric_light(I, dark, backend=fused_b),
        "triton": lambda: ops.atmospheric_light(I, dark, backend="triton"),
        "eager": lambda: eager_atmospheric_light(I, dark), "compile": lambda: c_A(I, dark)}))
    cases.append(Case(f"transmission f32 [1,3,{H},{W}]", img_b + map_b, {
        fused_b: lambda: ops.transmission(I, A, backend=fused_b),
        "triton": lambda: ops.transmission(I, A, backend="triton"),
        "eager": lambda: eager_transmission(I, A), "compile": lambda: c_t(I, A)}))
    cases.append(Case(f"dehaze_dcp f32 [1,3,{H},{W}]", 2 * img_b + map_b, {
        fused_b: lambda: ops.dehaze_dcp(I, backend=fused_b), "triton": lambda: ops.dehaze_dcp(I, backend="triton"),
        "eager": lambda: eager_dcp(I), "compile": lambda: c_dcp(I)}))
    return cases


if __name__ == "__main__":  # quick manual run: python -m benchmarks.bench_dcp
    import time
    I = _photo() if data_dir() else torch.rand(1, 3, 1800, 2708)
    print(pathlib.Path(PHOTO).name, tuple(I.shape))
