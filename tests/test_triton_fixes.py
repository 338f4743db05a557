"""Regression tests for the Triton findings of ../shared/reviews/gpu-readiness.md that a CPU can show.

The interpreter differs from a GPU launch in how it types the scalar arguments: on a GPU Triton
passes every Python float as an fp32 argument and turns every int equal to 1 into a constexpr
(which has no ``.to()``); the interpreter keeps floats as exact, weakly typed Python floats and
ints as int32 tensors. The ``gpu_typed`` fixture makes the interpreter type them as a GPU does,
so the float64 kernels must receive scalars as hi/lo pairs (review P0 #4) and ints equal to 1
must work as constexprs (P0 #3, P1 #6). What only compiling shows (the non-constexpr global
A_MIN, P0 #1) is tests/test_triton_aot.py's job. Also here: grid axes 1/2 stay under 65535
(P1 #9), the device guard and CPU-tensor check of the Triton launchers (P1 #7, issue 11 item 6),
and no float atomics in kernels/ (determinism, P3 #16).
"""
import os
import pathlib
import re
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch

import fastdehaze.ops as ops
from fastdehaze.ops import _dispatch

ROOT = pathlib.Path(__file__).resolve().parents[1]

interp = pytest.importorskip("triton.runtime.interpreter")
import triton.language as tl  # noqa: E402

needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="the Triton kernels run on CPU tensors only under the interpreter")


@pytest.fixture
def gpu_typed(monkeypatch):
    """The interpreter typing scalar kernel arguments as a GPU launch does: Python floats become
    fp32 tensors (rounded to float32), ints equal to 1 become tl.constexpr(1)."""
    orig = interp._implicit_cvt

    def cvt(arg):
        if isinstance(arg, float):
            h = interp.TensorHandle(np.array([arg], dtype=np.float32), tl.float32)
            return tl.tensor(h, tl.float32)
        if isinstance(arg, int) and not isinstance(arg, bool) and arg == 1:
            return tl.constexpr(1)
        return orig(arg)

    monkeypatch.setattr(interp, "_implicit_cvt", cvt)


def _close(a, b, tol):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


# ---- P0 #4: Python floats are fp32 kernel arguments on a GPU ---------------------------------

@needs_interpreter
def test_gpu_typed_fixture_rounds_floats(gpu_typed):
    """The fixture really rounds: a float64 multiply by an fp32(0.95) argument is off by ~1e-8."""
    import triton

    @triton.jit
    def scale(x_ptr, y_ptr, s):
        tl.store(y_ptr, tl.load(x_ptr) * s)

    x = torch.ones(1, dtype=torch.float64)
    y = torch.empty_like(x)
    scale[(1,)](x, y, 0.95)
    assert abs(y.item() - 0.95) > 1e-9


@needs_interpreter
def test_transmission_float64_omega_exact(gpu_typed):
    I = torch.rand(1, 3, 9, 11, dtype=torch.float64)
    A = torch.tensor([0.9, 0.8, 0.85], dtype=torch.float64).reshape(1, 3, 1, 1)
    got = ops.transmission(I, A, omega=0.95, patch=3, backend="triton")
    _close(got, ops.transmission(I, A, omega=0.95, patch=3, backend="reference"), 1e-12)


@needs_interpreter
def test_guided_filter_float64_eps_exact(gpu_typed):
    g = torch.Generator().manual_seed(0)
    for guide_c in (1, 3):
        I = torch.rand(1, guide_c, 9, 17, dtype=torch.float64, generator=g)
        p = torch.rand(1, 2, 9, 17, dtype=torch.float64, generator=g)
        got = ops.guided_filter(I, p, 3, 1e-2, backend="triton")
        _close(got, ops.guided_filter(I, p, 3, 1e-2, backend="reference"), 1e-10)


@needs_interpreter
def test_recover_float64_clamp_bounds_exact(gpu_typed):
    I = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    t = torch.rand(1, 1, 5, 7, dtype=torch.float64) * 0.5 + 0.2
    A = torch.full((1, 3, 1, 1), 0.8, dtype=torch.float64)
    got = ops.recover(I, t, A, 0.1, clamp=(0.1, 0.9), backend="triton")
    want = ops.recover(I, t, A, 0.1, clamp=(0.1, 0.9), backend="reference")
    assert (want == 0.1).any() and (want == 0.9).any()
    _close(got, want, 1e-14)


@needs_interpreter
def test_contrastive_backward_float64_eps_exact(gpu_typed):
    a = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    pos = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    neg = (a.detach() + 1e-9 * torch.rand(2, 3, 4, 4, dtype=torch.float64))[None]  # D ~ eps
    grads = []
    for b in ("triton", "reference"):
        a.grad = None
        ops.contrastive_distance(a, pos, neg, eps=0.1, backend=b).backward()
        grads.append(a.grad.clone())
    _close(grads[0], grads[1], 1e-12)


# ---- P0 #3 / P1 #6: ints equal to 1 are constexprs on a GPU ------------------------------------

@needs_interpreter
def test_patch_rank_patch_1(gpu_typed):
    x = torch.rand(1, 3, 5, 6)
    got = ops.patch_brightness_rank(x, patch=1, k=2, backend="triton")
    want = ops.patch_brightness_rank(x, patch=1, k=2, backend="reference")
    for g, w in zip(got, want):
        _close(g, w, 1e-6)


@needs_interpreter
def test_gather_patch_1(gpu_typed):
    x = torch.rand(1, 2, 4, 4, requires_grad=True)
    c = torch.tensor([[[1, 2], [3, 0]]])
    out = ops.gather_patches(x, c, 1, backend="triton")
    _close(out, ops.gather_patches(x, c, 1, backend="reference"), 0)
    out.sum().backward()
    assert x.grad.sum() == 4


@needs_interpreter
def test_contrastive_single_element_layer(gpu_typed):
    """N == 1 (a globally pooled [1,1,1,1] feature): numel as a constexpr in the backward."""
    grads = []
    a = torch.rand(1, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    pos, neg = torch.rand(1, 1, 1, 1, dtype=torch.float64), torch.rand(1, 1, 1, 1, 1, dtype=torch.float64)
    for b in ("triton", "reference"):
        a.grad = None
        ops.contrastive_distance(a, pos, neg, backend=b).backward()
        grads.append(a.grad.clone())
    _close(grads[0], grads[1], 1e-12)


# ---- P1 #9: grid axes 1 and 2 stop at 65535 on a GPU -------------------------------------------

@needs_interpreter
def test_grids_fold_batch_into_axis_0(monkeypatch):
    """Launch shapes only (nothing runs): B * C = 65536 planes must not put 65536 on axis 1/2."""
    grids = []

    def record(self, *args, grid, warmup, **kwargs):
        grids.append((self.fn.__name__, tuple(grid)))

    monkeypatch.setattr(interp.InterpretedFunction, "run", record)
    n = 65536
    ops.gather_patches(torch.rand(1, n, 1, 1), torch.zeros(1, 1, 2, dtype=torch.int64), 1, backend="triton")
    ops.recover(torch.rand(n, 1, 1, 2), torch.rand(n, 1, 1, 2), torch.rand(n, 1, 1, 1), 0.1, backend="triton")
    ops.guided_filter(torch.rand(n, 1, 1, 2), torch.rand(n, 1, 1, 2), 1, 1e-3, backend="triton")
    ops.difference_perception_weight(torch.rand(n, 1, 1, 2), backend="triton")
    ops.atmospheric_light(torch.rand(n, 1, 1, 2), torch.rand(n, 1, 1, 2), backend="triton")
    ops.patch_brightness_rank(torch.rand(1, 1, n + 1, 1), patch=1, k=1, backend="triton")  # n + 1 patch rows
    assert len({name for name, _ in grids}) >= 8
    bad = [(name, g) for name, g in grids if any(d > 65535 for d in g[1:])]
    assert not bad, bad


# ---- P1 #7: the device guard; issue 11 item 6: CPU tensors without the interpreter -------------

@needs_interpreter
def test_triton_launch_runs_under_device_guard(monkeypatch):
    entered = []

    class Guard:
        def __init__(self, dev):
            self.dev = dev

        def __enter__(self):
            entered.append(self.dev)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Guard)
    monkeypatch.setattr(_dispatch, "_launch_device", lambda args: torch.device("cuda", 1))
    monkeypatch.setattr(_dispatch, "_check_triton_device", lambda op, dev: None)
    ops.box_filter(torch.rand(1, 1, 4, 4), 1, backend="triton")
    assert entered == [torch.device("cuda", 1)]
    monkeypatch.undo()
    # the helper finds the device of a Tensor[] argument too (contrastive ops)
    assert _dispatch._launch_device((0.5, [torch.zeros(1, device="meta")])) == torch.device("meta")


def test_triton_ops_reject_cpu_tensors_without_interpreter():
    code = r"""
import os, torch
assert "TRITON_INTERPRET" not in os.environ
import fastdehaze.ops  # registers the ops
x = torch.rand(1, 3, 8, 8)
calls = {
    "dark_channel_triton": lambda: torch.ops.fastdehaze.dark_channel_triton(x, 3),
    "box_filter_triton": lambda: torch.ops.fastdehaze.box_filter_triton(x, 1),
    "recover_triton": lambda: torch.ops.fastdehaze.recover_triton(x, x[:, :1], torch.ones(1, 3), torch.full((1, 3), 0.1), 0.0, 1.0, False),
    "gather_patches_triton": lambda: torch.ops.fastdehaze.gather_patches_triton(x, torch.zeros(1, 1, 2, dtype=torch.int64), 2),
    "contrastive_distance_triton": lambda: torch.ops.fastdehaze.contrastive_distance_triton(x, x, [x], torch.ones(1), 1e-7, False),
    "difference_perception_weight_triton": lambda: torch.ops.fastdehaze.difference_perception_weight_triton(x, 1e-7, False),
}
for name, call in calls.items():
    try:
        call()
    except RuntimeError as e:
        assert "interpreter" in str(e) and name in str(e), (name, str(e))
        print("ok", name)
    else:
        raise SystemExit(f"{name}: no RuntimeError")
"""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert r.stdout.count("ok ") == 6, r.stdout


# ---- P3 #16: no float atomics (bitwise run-to-run results on a GPU) ----------------------------

def test_no_float_atomics_in_triton_kernels():
    """Every Triton reduction is fixed-order (per-program partials summed by torch); the only
    atomic left is the int32 histogram of atmospheric_light's radix select (exact in any order)."""
    found = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\btl\.atomic_\w+\(", code):
                found.append(f"{path.name}:{i}: {line.strip()}")
    assert len(found) == 1 and "hist_ptr" in found[0], found
