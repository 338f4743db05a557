"""Test setup.

Without a CUDA device (this machine, CI) every test runs on CPU tensors and the Triton kernels
run under the interpreter: TRITON_INTERPRET=1 is set here, before any @triton.jit runs (i.e.
before fastdehaze.kernels is first imported). With a CUDA device (benchmarks/gpu_check.py) the
Triton kernels are compiled for the GPU and the CUDA C++ backend is tested too.
"""
import os
import pathlib

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastdehaze  # noqa: E402

DATA = pathlib.Path(os.environ.get("FASTDEHAZE_DATA") or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")

#: (backend, device) pairs every fused op is tested with. The C++ CPU backend must be built: a
#: missing build fails the tests (it is never skipped).
BACKEND_DEVICES = [("cpu", "cpu"), ("triton", "cuda" if HAS_CUDA else "cpu")] + ([("cuda", "cuda")] if HAS_CUDA else [])


@pytest.fixture(params=BACKEND_DEVICES, ids=lambda p: f"{p[0]}-{p[1]}")
def backend_device(request):
    """Yields (backend, device) for each fused backend that runs here."""
    return request.param


@pytest.fixture
def data_dir():
    if not DATA.is_dir():
        pytest.skip(f"test images not found at {DATA} (../shared/data beside the checkout, or set FASTDEHAZE_DATA)")
    return DATA


def pytest_report_header(config):
    return fastdehaze.backend_report()
