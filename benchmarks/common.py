"""Shared pieces of the benchmarks (pytest-benchmark files and benchmarks/gpu_check.py).

Each ``benchmarks/bench_<family>.py`` has
* pytest-benchmark tests (``pytest benchmarks --benchmark-only``): the fused CPU backend, eager
  PyTorch and ``torch.compile`` of the same eager code, in one run, grouped per case, so the
  ratios come from one table; and
* ``gpu_cases(device, small) -> list[Case]``: the cases benchmarks/gpu_check.py times on a GPU
  (or, with ``--cpu``, at small sizes on the CPU so that the script is exercised by a test).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from typing import Any, Callable

import torch


@dataclasses.dataclass
class Case:
    """One GPU benchmark case.

    name: short label with the shape, e.g. "recover f32 [8,3,2048,2048]".
    bytes: the fewest bytes the op must move through memory (each input read once, each output
        written once): the numerator of the achieved-bandwidth figure.
    providers: zero-argument callables keyed "cuda", "triton", "eager", "compile" (any subset);
        each runs the whole case once (forward, or forward+backward where the case says so).
    """
    name: str
    bytes: int
    providers: dict[str, Callable[[], Any]]


def compiled(fn: Callable) -> Callable:
    """torch.compile of ``fn`` (the eager baseline), compiled lazily at first call."""
    return torch.compile(fn, dynamic=False)


def tensor_bytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def peak_rss_of(code: str) -> int:
    """Peak resident memory (bytes) of a fresh Python process that runs ``code``, minus that of
    one that only imports torch and fastdehaze: each variant's peak in its own process (CPU)."""
    def run(src):
        # VmHWM (peak RSS of this process's address space, reset by exec) rather than ru_maxrss,
        # which on Linux keeps the parent's peak across fork + exec.
        prog = ("import torch, fastdehaze.ops\n" + src +
                "\nprint([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
        out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
        return int(out.stdout.strip().splitlines()[-1]) * 1024
    return run(code) - run("pass")


@functools.lru_cache(maxsize=None)
def data_dir():
    import pathlib
    p = pathlib.Path(os.environ.get("FASTDEHAZE_DATA") or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
    return p if p.is_dir() else None


def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
