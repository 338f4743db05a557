"""Loading of the compiled extensions and of the Triton kernels, and what is available.

Each op family (``asm``, ``dcp``, ...) has its own pair of compiled modules:
``fastdehaze._C_<family>`` (schemas + C++ CPU kernels) and ``fastdehaze._cuda_<family>``
(CUDA kernels). A module that fails to import is recorded with its error, never raised at
``import fastdehaze``: the backend is then reported unavailable and asking for it raises a
RuntimeError that quotes the error.
"""
from __future__ import annotations

import importlib
import os

import torch

_native: dict[tuple[str, str], object] = {}  # (kind, family) -> module or the exception raised


def load(family: str) -> None:
    """Import ``_C_<family>`` and ``_cuda_<family>`` once (static op registrations run then)."""
    for kind in ("C", "cuda"):
        key = (kind, family)
        if key in _native:
            continue
        try:
            _native[key] = importlib.import_module(f"fastdehaze._{kind}_{family}")
        except Exception as e:  # ImportError, or an OSError from a missing shared library
            _native[key] = e


def native_loaded(family: str, device_type: str) -> bool:
    """Whether the C++ kernels of ``family`` for ``device_type`` ("cpu" or "cuda") are loaded."""
    load(family)
    kind = "C" if device_type == "cpu" else "cuda"
    ok = not isinstance(_native.get((kind, family)), Exception)
    if device_type == "cuda":
        ok = ok and not isinstance(_native.get(("C", family)), Exception)  # schemas live in _C
    return ok


def native_error(family: str, device_type: str) -> str:
    load(family)
    for kind in ("C",) + (("cuda",) if device_type == "cuda" else ()):
        err = _native.get((kind, family))
        if isinstance(err, Exception):
            return f"fastdehaze._{kind}_{family} did not load ({type(err).__name__}: {err})"
    return ""


# ---- Triton -------------------------------------------------------------------------------
# @triton.jit reads TRITON_INTERPRET when a kernel is decorated, i.e. when fastdehaze.kernels is
# first imported: set it before importing fastdehaze to run the Triton kernels on CPU tensors.
_triton_state: dict[str, object] = {}


def _triton_check() -> tuple[bool, bool, str]:
    if not _triton_state:
        try:
            kernels = importlib.import_module("fastdehaze.kernels")
            _triton_state.update(ok=True, interpret=bool(kernels.INTERPRET), why="")
        except Exception as e:
            _triton_state.update(ok=False, interpret=False, why=f"triton did not import ({type(e).__name__}: {e})")
    return bool(_triton_state["ok"]), bool(_triton_state["interpret"]), str(_triton_state["why"])


def triton_ready(device_type: str) -> tuple[bool, str]:
    ok, interpret, why = _triton_check()
    if not ok:
        return False, why
    if device_type == "cpu":
        if interpret:
            return True, ""
        return False, ("the Triton kernels run on CPU tensors only under the interpreter: set "
                       "TRITON_INTERPRET=1 before importing fastdehaze")
    if device_type == "cuda":
        if interpret:
            return False, "TRITON_INTERPRET=1 is set: the Triton kernels were built for the interpreter, not the GPU"
        return True, ""
    return False, f"no Triton backend for device type {device_type!r}"


def available_backends(device: str | torch.device = "cpu", family: str = "asm") -> dict[str, bool]:
    """Which backends can run ``family``'s ops on tensors of ``device`` here.

    >>> fastdehaze.available_backends("cpu")
    {'reference': True, 'cpu': True, 'cuda': False, 'triton': False}
    """
    dev = torch.device(device).type
    return {
        "reference": True,
        "cpu": dev == "cpu" and native_loaded(family, "cpu"),
        "cuda": dev == "cuda" and torch.cuda.is_available() and native_loaded(family, "cuda"),
        "triton": triton_ready(dev)[0] and (dev != "cuda" or torch.cuda.is_available()),
    }


def backend_report() -> str:
    """A human-readable table of every family's backends (used by ``fastdehaze info``)."""
    fams = sorted({n[len("_C_"):].split(".")[0] for n in os.listdir(os.path.dirname(__file__)) if n.startswith("_C_")})
    lines = [f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda device: {torch.cuda.is_available()}"]
    ok, interpret, why = _triton_check()
    lines.append(f"triton: {'yes' if ok else 'no'}{' (interpreter)' if interpret else ''}{(' - ' + why) if why else ''}")
    for fam in fams:
        load(fam)
        cells = []
        for kind in ("C", "cuda"):
            v = _native.get((kind, fam))
            cells.append(f"_{kind}_{fam}: " + ("loaded" if not isinstance(v, Exception) else f"missing ({v})"))
        lines.append("  " + "; ".join(cells))
    return "\n".join(lines)
