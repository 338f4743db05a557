"""Benchmarks of depth_difference_loss (DCMPNet difference perception, SPEC section 5).

Providers (forward + backward of the depth loss, float32; gradients to dehazed, depth_pred and
depth_target as in DCMPNet, whose teacher depth is not computed under no_grad):
  fused   - fastdehaze.ops.depth_difference_loss, C++ CPU backend
  eager   - DCMPNet train.py's code (softmax over a permuted copy, channel sum, two L1 losses)
  compile - torch.compile of that eager code (warmed up before timing)

Peak memory: each variant in its own process (:func:`peak_step_bytes`): one warm-up
forward+backward, then the peak RSS is reset (/proc/self/clear_refs) and one more is run, so
the figure is the peak of a training step above its starting RSS, not of compilation. Stored in
extra_info["peak_step_MB"].

    pytest benchmarks/bench_depth_difference.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import Case, compiled, tensor_bytes
from fastdehaze import ops

CASES = [(8, 3, 256, 256), (2, 3, 1024, 1024)]


def dcmpnet_depth_loss(dehaze_output_img, target_img, dehaze_output_img_2_depth_img, real_img_2_depth_img):
    """DCMPNet's train.py depth loss (the code the fused op replaces)."""
    diff_dehaze = torch.sub(dehaze_output_img, target_img)
    B, C, H, W = diff_dehaze.shape
    diff_dehaze = diff_dehaze.permute(0, 2, 3, 1)
    diff_dehaze = diff_dehaze.reshape(-1, C * H * W)
    diff_d_w = F.softmax(diff_dehaze, dim=-1) + 1e-7
    diff_d_w = diff_d_w.reshape(B, H, W, C).permute(0, 3, 1, 2)
    diff_dehaze_w = torch.sum(diff_d_w, dim=1, keepdim=True)
    weighted_depth_output_img = torch.mul(dehaze_output_img_2_depth_img, diff_dehaze_w)
    weighted_real_img_2_depth_img = torch.mul(real_img_2_depth_img, diff_dehaze_w)
    return F.l1_loss(weighted_depth_output_img, weighted_real_img_2_depth_img) + \
        F.l1_loss(dehaze_output_img_2_depth_img, real_img_2_depth_img)


def make_inputs(shape, device="cpu", dtype=torch.float32, seed=0):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(seed)
    dh = (torch.rand(B, C, H, W, generator=g) * 2 - 1).to(device, dtype).requires_grad_()
    cl = (torch.rand(B, C, H, W, generator=g) * 2 - 1).to(device, dtype)
    dp = torch.rand(B, 1, H, W, generator=g).to(device, dtype).requires_grad_()
    dt = torch.rand(B, 1, H, W, generator=g).to(device, dtype).requires_grad_()
    return dh, cl, dp, dt


def _fused(backend):
    return lambda dh, cl, dp, dt: ops.depth_difference_loss(dh, cl, dp, dt, backend=backend)


def step(fn, ins):
    """One forward + backward (gradients accumulate into .grad; reset so they do not grow)."""
    for t in ins:
        t.grad = None
    fn(*ins).backward()


_PROVIDERS = {"fused": "_fused('cpu')", "eager": "dcmpnet_depth_loss", "compile": "compiled(dcmpnet_depth_loss)"}


def _peak_code(provider, shape):
    """Code for a fresh process: warm-up step, reset of the peak RSS, one measured step; prints
    the step's peak RSS above the RSS it started from (from /proc/self/status, VmHWM - VmRSS)."""
    return (f"import gc, torch\nfrom benchmarks.common import compiled\n"
            f"from benchmarks.bench_depth_difference import dcmpnet_depth_loss, _fused, make_inputs, step, _status\n"
            f"fn = {_PROVIDERS[provider]}\nins = make_inputs({shape})\nstep(fn, ins)\n"
            f"for t in ins: t.grad = None\ngc.collect()\n"
            f"open('/proc/self/clear_refs', 'w').write('5')\nrss0 = _status('VmRSS')\nstep(fn, ins)\n"
            f"print(_status('VmHWM') - rss0)\n")


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_step_bytes(provider, shape):
    """Peak memory of one forward+backward of ``provider`` in its own process (bytes above the
    RSS the step starts from: inputs and parameters excluded, gradients and temporaries included).

    Not benchmarks.common.peak_rss_of: its ru_maxrss is, on Linux, at least the parent's peak RSS
    inherited through fork/exec, so launched from a large pytest process every variant reads the
    same. glibc's dynamic mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so that freed
    tensors leave the RSS in every variant alike.
    """
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", _peak_code(provider, shape)], capture_output=True, text=True,
                         check=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_depth_difference_loss_fwd_bwd(benchmark, provider, shape):
    benchmark.group = f"depth_difference_loss fwd+bwd {list(shape)}"
    fn = {"fused": _fused("cpu"), "eager": dcmpnet_depth_loss, "compile": compiled(dcmpnet_depth_loss)}[provider]
    ins = make_inputs(shape)
    step(fn, ins)  # warm-up (compiles the compile provider)
    benchmark.pedantic(step, args=(fn, ins), rounds=10, warmup_rounds=1, iterations=1)
    benchmark.extra_info["peak_step_MB"] = round(peak_step_bytes(provider, tuple(shape)) / 2**20, 1)


# ---- GPU (benchmarks/gpu_check.py) ------------------------------------------------------------

def gpu_cases(device="cuda", small=False):
    """Forward+backward of the depth loss: fused CUDA C++, fused Triton, eager DCMPNet, compile."""
    shapes = [(1, 3, 32, 32), (2, 3, 17, 23)] if small else CASES
    native = "cuda" if torch.device(device).type == "cuda" else "cpu"  # --cpu: the C++ CPU kernel stands in
    out = []
    for shape in shapes:
        ins = make_inputs(shape, device=device)
        B, C, H, W = shape
        # Fewest bytes of forward+backward: read the two images and two depths (forward pass 1
        # reads the images, pass 2 all four; the backward reads all four and writes the grads of
        # dehazed and both depths): 3 reads of the images, 2 of the depths, 1 write of each grad.
        img, dep = tensor_bytes(ins[0]), tensor_bytes(ins[2])
        nbytes = 2 * img + 2 * dep + img + 2 * dep + img + 2 * dep
        comp = compiled(dcmpnet_depth_loss)
        out.append(Case(
            name=f"depth_difference_loss fwd+bwd f32 {list(shape)}", bytes=nbytes,
            providers={"cuda": lambda ins=ins: step(_fused(native), ins),
                       "triton": lambda ins=ins: step(_fused("triton"), ins),
                       "eager": lambda ins=ins: step(dcmpnet_depth_loss, ins),
                       "compile": lambda ins=ins, comp=comp: step(comp, ins)}))
    return out
