"""Test setup. TRITON_INTERPRET=1 must be set before any @triton.jit runs (i.e. before
fastdehaze.kernels is imported) so that the Triton kernels are tested on CPU tensors."""
import os

if not os.environ.get("FASTDEHAZE_TEST_GPU_TRITON"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import fastdehaze  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
if os.environ.get("FASTDEHAZE_DATA"):
    DATA = pathlib.Path(os.environ["FASTDEHAZE_DATA"])


def fused_backends(family, device="cpu"):
    """The fused backends to test on ``device``: every one that should exist here. The C++ CPU
    backend must be built (a missing build fails the tests, it is not skipped); Triton runs under
    the interpreter on CPU."""
    if device == "cpu":
        return ["cpu", "triton"]
    return ["cuda", "triton"]


@pytest.fixture
def data_dir():
    if not DATA.is_dir():
        pytest.skip(f"test images not found at {DATA} (../shared/data beside the checkout; or set FASTDEHAZE_DATA)")
    return DATA


def pytest_report_header(config):
    return fastdehaze.backend_report()
