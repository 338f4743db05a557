"""torch.compile(fullgraph=True) on the FIRST call of a process (issue 11 item 7).

A registration or an import inside an op's call path (a lazy ``register_fake``, the first
import of the Triton kernels) is a graph break, i.e. an error with ``fullgraph=True``; an eager
call earlier in the same process hides it, so test order decided whether the compile tests
passed. Here each family runs in a fresh subprocess that compiles before anything is called
eagerly, forward and backward, for the C++ CPU backend and for Triton under the interpreter.
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

PRELUDE = r"""
import torch
import fastdehaze.ops as F
B = BACKEND
def comp(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")
def rand(*s, grad=False):
    return torch.rand(*s, dtype=torch.float64).requires_grad_(grad)
"""

FAMILIES = {
    "asm": r"""
x, t, A = rand(1, 3, 5, 6, grad=True), rand(1, 1, 5, 6, grad=True), rand(1, 3, 1, 1, grad=True)
comp(lambda x, t, A: F.recover(x, t, A, 0.1, clamp=(0.0, 1.0), backend=B).sum())(x, t, A).backward()
d, beta = rand(1, 1, 5, 6, grad=True), rand(1, 3, 1, 1, grad=True)
comp(lambda x, A, d, beta: F.synthesize_haze(x, A, depth=d, beta=beta, backend=B).sum())(x, A, d, beta).backward()
assert x.grad is not None and A.grad is not None and d.grad is not None
""",
    "dcp": r"""
x = rand(1, 3, 9, 8, grad=True)
comp(lambda x: F.dark_channel(x, 3, backend=B).sum())(x).backward()
assert x.grad is not None
J = comp(lambda x: F.dehaze_dcp(x, patch=3, r=2, backend=B))(torch.rand(1, 3, 9, 8))
assert J.shape == (1, 3, 9, 8)
""",
    "filters": r"""
x = rand(1, 2, 7, 6, grad=True)
comp(lambda x: F.box_filter(x, 2, backend=B).sum())(x).backward()
assert x.grad is not None
q = comp(lambda g, x: F.guided_filter(g, x, 2, 1e-2, backend=B))(rand(1, 1, 7, 6), rand(1, 2, 7, 6))
assert q.shape == (1, 2, 7, 6)
""",
    "patch": r"""
x = rand(1, 3, 8, 8, grad=True)
r = comp(lambda x: F.patch_brightness_rank(x, patch=2, k=2, backend=B))(x.detach())
comp(lambda x, c: F.gather_patches(x, c, 2, backend=B).sum())(x, r[2]).backward()
assert x.grad is not None
""",
    "contrastive": r"""
a, p, n = rand(1, 3, 4, 4, grad=True), rand(1, 3, 4, 4), rand(2, 1, 3, 4, 4)
comp(lambda a, p, n: F.contrastive_distance(a, p, n, backend=B))(a, p, n).backward()
comp(lambda a, p, n: F.contrastive_loss([a], [p], [n], layer_weights=(1.0,), backend=B))(a, p, n).backward()
assert a.grad is not None
""",
    "depth_difference": r"""
h, c = rand(1, 3, 4, 5, grad=True), rand(1, 3, 4, 5)
dp, dt = rand(1, 1, 4, 5, grad=True), rand(1, 1, 4, 5)
comp(lambda h, c, dp, dt: F.depth_difference_loss(h, c, dp, dt, backend=B))(h, c, dp, dt).backward()
d = rand(1, 3, 4, 5, grad=True)
comp(lambda d: F.difference_perception_weight(d, backend=B).sum())(d).backward()
assert h.grad is not None and dp.grad is not None and d.grad is not None
""",
}


def _run(code, backend, interpret):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    src = PRELUDE.replace("BACKEND", repr(backend)) + code + "\nprint('FIRST-CALL-OK')\n"
    return subprocess.run([sys.executable, "-c", src], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compile_fullgraph_first_call(family, backend):
    pytest.importorskip("triton") if backend == "triton" else None
    r = _run(FAMILIES[family], backend, interpret=backend == "triton")
    assert r.returncode == 0 and "FIRST-CALL-OK" in r.stdout, r.stderr[-6000:]


def test_issue_repro_dehaze_dcp_inductor():
    """The issue's command, with the default (inductor) backend."""
    code = "J = torch.compile(lambda x: F.dehaze_dcp(x), fullgraph=True)(torch.rand(1, 3, 64, 64))\n"
    r = _run(code, "cpu", interpret=False)
    assert r.returncode == 0 and "FIRST-CALL-OK" in r.stdout, r.stderr[-6000:]
