"""The op architecture itself: backend resolution, availability, schemas of the two registered
forms of every fused op, the built extensions."""
import os
import pathlib
import shutil

import pytest
import torch

import fastdehaze
import fastdehaze.ops  # noqa: F401  (registers every family's ops)
from fastdehaze import _ext
from fastdehaze.ops._dispatch import REGISTRY, as_bc, resolve_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = sorted(p.stem for p in (ROOT / "csrc" / "schemas").glob("*.cpp"))


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("fastest", "asm", torch.device("cpu"))


def test_backend_for_wrong_device_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="backend='cuda' needs CUDA tensors"):
        resolve_backend("cuda", "asm", torch.device("cpu"))


def test_auto_picks_cpp_on_cpu_and_reference_is_always_there():
    assert resolve_backend("auto", "asm", torch.device("cpu")) == "cpu"
    assert resolve_backend("reference", "asm", torch.device("cpu")) == "reference"


def test_missing_native_build_is_a_clear_runtime_error(monkeypatch):
    monkeypatch.setitem(_ext._native, ("C", "asm"), ImportError("simulated missing build"))
    with pytest.raises(RuntimeError, match="simulated missing build"):
        resolve_backend("cpu", "asm", torch.device("cpu"))


def test_triton_without_interpreter_on_cpu_is_a_runtime_error(monkeypatch):
    monkeypatch.setattr(_ext, "_triton_state", {"ok": True, "interpret": False, "why": ""})
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "asm", torch.device("cpu"))


def test_available_backends_report():
    av = fastdehaze.available_backends("cpu")
    assert av["reference"] and av["cpu"]
    assert av["cuda"] is False
    assert av["triton"] == (os.environ.get("TRITON_INTERPRET") == "1")
    assert "_C_asm: loaded" in fastdehaze.backend_report()


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if not op.cpu_only))
def test_triton_schema_equals_cpp_schema(name):
    op = REGISTRY[name]
    assert op.native is not None, f"C++ op fastdehaze::{name} not loaded: {_ext.native_error(op.family, 'cpu')}"
    cpp = str(op.native._schema).split("(", 1)[1]
    tri = str(torch.ops.fastdehaze.__getattr__(f"{name}_triton").default._schema).split("(", 1)[1]
    assert cpp == tri
    if op.native_backward is not None:
        cpp_b = str(op.native_backward._schema).split("(", 1)[1]
        tri_b = str(torch.ops.fastdehaze.__getattr__(f"{name}_backward_triton").default._schema).split("(", 1)[1]
        assert cpp_b == tri_b


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_cpu_extension_loads(family):
    assert _ext.native_loaded(family, "cpu"), _ext.native_error(family, "cpu")


def _cuda_toolkit():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return os.path.exists(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc")


@pytest.mark.skipif(torch.version.cuda is None or not _cuda_toolkit(),
                    reason="CPU-only torch or no CUDA toolkit: the CUDA extensions are not built")
@pytest.mark.parametrize("family", [f for f in FAMILIES if (ROOT / "csrc" / "cuda" / f"{f}.cu").exists()])
def test_cuda_extension_was_built(family):
    """With a CUDA build of torch and a toolkit (CI: torch 2.14.1 + nvcc 13) the CUDA extensions
    must have been compiled and linked, even though no GPU can run them here."""
    built = list((ROOT / "fastdehaze").glob(f"_cuda_{family}.*.so"))
    import importlib.util
    spec = importlib.util.find_spec(f"fastdehaze._cuda_{family}")
    assert built or spec is not None, f"fastdehaze._cuda_{family} was not built (build with FORCE_CUDA=1)"


@pytest.mark.parametrize("value,shape", [(0.7, (2, 3)), (torch.tensor(0.7), (2, 3)),
                                         (torch.rand(2, 1, 1, 1), (2, 3)), (torch.rand(2, 3, 1, 1), (2, 3)),
                                         (torch.rand(1, 3, 1, 1), (2, 3))])
def test_as_bc_broadcast_forms(value, shape):
    out = as_bc(value, "A", 2, 3, torch.float32, torch.device("cpu"))
    assert out.shape == shape and out.is_contiguous() and out.dtype == torch.float32
    ref = (value if isinstance(value, torch.Tensor) else torch.tensor(value)).reshape(-1, 1) if not isinstance(
        value, torch.Tensor) or value.dim() == 0 else value.reshape(value.shape[0], value.shape[1])
    torch.testing.assert_close(out, ref.to(torch.float32).expand(2, 3))


@pytest.mark.parametrize("bad,exc", [(torch.rand(3, 1, 1, 1), ValueError), (torch.rand(2, 3), ValueError),
                                     ("0.5", TypeError), (torch.tensor([1]), TypeError)])
def test_as_bc_rejects_bad_forms_naming_the_argument(bad, exc):
    with pytest.raises(exc, match="beta"):
        as_bc(bad, "beta", 2, 3, torch.float32, torch.device("cpu"))


def test_double_backward_is_an_error_not_a_silent_zero():
    """The fused backward ops have no autograd formula: create_graph=True must raise (naming the
    op and the way out) instead of returning a gradient whose own gradient is silently zero."""
    import fastdehaze.ops as F

    a = torch.rand(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    p, n = torch.rand(2, 2, 3, 5, 5, dtype=torch.float64).unbind(0)
    with pytest.raises(RuntimeError, match="contrastive.*double backward.*reference"):
        torch.autograd.grad(F.contrastive_distance(a, p, [n], backend="cpu"), a, create_graph=True)
    img = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="recover.*double backward"):
        torch.autograd.grad(F.recover(img, torch.rand(1, 1, 8, 8, dtype=torch.float64), 0.8).sum(), img,
                            create_graph=True)
    # the reference backend supports it
    g, = torch.autograd.grad(F.contrastive_distance(a, p, [n], backend="reference"), a, create_graph=True)
    assert g.requires_grad
