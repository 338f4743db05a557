"""How ``backend=`` maps onto registered ops.

The dispatcher holds one kernel per device key per op, but two fused backends run on each
device (C++ and Triton). So every fused op exists as two registered ops:

* ``fastdehaze::<name>``: schema in ``csrc/schemas/<family>.cpp``, C++ kernels registered for
  the CPU key (``csrc/cpu``) and the CUDA key (``csrc/cuda``). ``backend="cpu"`` and
  ``backend="cuda"`` call it.
* ``fastdehaze::<name>_triton``: a ``torch.library.custom_op`` with the same schema whose
  implementation launches the Triton kernel (``kernels/``) on CUDA tensors, or on CPU tensors
  under ``TRITON_INTERPRET=1``. ``backend="triton"`` calls it.

Both get the same fake (meta) implementation and the same autograd formula; the backward of
each is its own registered op (``<name>_backward`` / ``<name>_backward_triton``), so every
path is traceable by ``torch.compile(fullgraph=True)``. ``backend="reference"`` runs the
PyTorch definition in ``fastdehaze.reference`` (autograd by PyTorch). The choice between the
four happens in Python (:func:`resolve_backend`), before anything is dispatched.

``"auto"``: the C++ CPU kernel for CPU tensors; for CUDA tensors the CUDA C++ kernel, or the
Triton one where the family has no CUDA C++ build. An unavailable backend is a RuntimeError,
never a silent fallback.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import _ext

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")

#: Every FusedOp created, by name (tests/test_dispatch.py walks it: C++ and Triton schemas match).
REGISTRY: dict[str, "FusedOp"] = {}


def resolve_backend(backend: str, family: str, device: torch.device) -> str:
    """Return the concrete backend ("reference", "cpu", "cuda" or "triton") for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dev = device.type
    if backend == "reference":
        return "reference"
    if backend == "auto":
        if dev == "cpu":
            backend = "cpu"
        elif dev == "cuda":
            backend = "cuda" if _ext.native_loaded(family, "cuda") else "triton"
        else:
            raise RuntimeError(f"fastdehaze: no fused backend for {dev} tensors; use backend='reference'")
    if backend in ("cpu", "cuda"):
        if dev != backend:
            raise RuntimeError(f"fastdehaze: backend={backend!r} needs {backend.upper()} tensors, got tensors on {device}")
        if not _ext.native_loaded(family, dev):
            raise RuntimeError(f"fastdehaze: backend={backend!r} is unavailable: {_ext.native_error(family, dev)}. "
                               "Build it with `pip install --no-build-isolation -e .` (FORCE_CUDA=1 for CUDA).")
        return backend
    ok, why = _ext.triton_ready(dev)
    if not ok:
        raise RuntimeError(f"fastdehaze: backend='triton' is unavailable for {dev} tensors: {why}")
    return "triton"


class FusedOp:
    """One fused op registered twice (C++ and Triton), with shared fake and autograd.

    Args:
        name: op name; the C++ schema ``fastdehaze::<name>`` must exist in csrc/schemas.
        family: the op family (extension ``_C_<family>``).
        schema: the schema without the name, e.g. ``"(Tensor x, float r) -> Tensor"``; the
            Triton op is defined with it (a test checks it equals the C++ schema).
        fake: fake/meta implementation (shapes and dtypes only).
        triton_impl: the implementation of ``<name>_triton``; default: the launcher
            ``fastdehaze.kernels.<family>.<name>`` (imported here when triton imports, so that
            a first ``torch.compile`` traces no import; Triton is optional). Every Triton
            implementation runs under :func:`_triton_guard` (device guard, CPU-tensor check).
        backward_schema / backward_fake / triton_backward_impl: the same for the backward op
            (default launcher ``<name>_backward``; omit all three for an op without gradient).
        setup_context(ctx, inputs, output) and backward(ctx, backward_op, *grads): the autograd
            formula, given the backward op of the path that ran the forward.
        cpu_only: the op exists only as a C++ CPU kernel (no Triton twin, no CUDA kernel): a
            variant the Python layer picks for CPU tensors (e.g. contrastive_loss_signs).
    """

    def __init__(self, name: str, family: str, schema: str, *, fake: Callable, triton_impl: Optional[Callable] = None,
                 backward_schema: Optional[str] = None, backward_fake: Optional[Callable] = None,
                 triton_backward_impl: Optional[Callable] = None, setup_context: Optional[Callable] = None,
                 backward: Optional[Callable] = None, cpu_only: bool = False):
        self.name, self.family = name, family
        self.cpu_only = cpu_only
        REGISTRY[name] = self
        _ext.load(family)
        self.native = None
        self.native_backward = None
        has_bwd = backward is not None
        self.triton = None
        if not cpu_only:
            _ext.triton_ready("cpu")  # import fastdehaze.kernels now, never inside a torch.compile trace
            self._register_triton(name, family, schema, fake, triton_impl, backward_schema, backward_fake,
                                  triton_backward_impl, setup_context, backward)
        if _ext.native_loaded(family, "cpu"):
            self.native = getattr(torch.ops.fastdehaze, name).default
            torch.library.register_fake(f"fastdehaze::{name}")(fake)
            if has_bwd:
                self.native_backward = getattr(torch.ops.fastdehaze, f"{name}_backward").default
                torch.library.register_fake(f"fastdehaze::{name}_backward")(backward_fake)
                self._autograd(f"fastdehaze::{name}", self.native_backward, setup_context, backward)

    def _register_triton(self, name, family, schema, fake, triton_impl, backward_schema, backward_fake,
                         triton_backward_impl, setup_context, backward):
        has_bwd = backward is not None
        if triton_impl is None:
            triton_impl = _triton_launcher(family, name)
        triton_impl = _triton_guard(triton_impl, f"{name}_triton")
        if has_bwd:
            if triton_backward_impl is None:
                triton_backward_impl = _triton_launcher(family, f"{name}_backward")
            triton_backward_impl = _triton_guard(triton_backward_impl, f"{name}_backward_triton")
        self.triton = torch.library.custom_op(f"fastdehaze::{name}_triton", triton_impl, mutates_args=(),
                                              schema=schema)
        self.triton.register_fake(fake)
        if has_bwd:
            self.triton_backward = torch.library.custom_op(f"fastdehaze::{name}_backward_triton",
                                                           triton_backward_impl, mutates_args=(),
                                                           schema=backward_schema)
            self.triton_backward.register_fake(backward_fake)
            self._autograd(self.triton, self.triton_backward, setup_context, backward)

    @staticmethod
    def _autograd(op, backward_op, setup_context, backward):
        name = str(op).split("(")[0] if not isinstance(op, str) else op

        def _bwd(ctx, *grads):
            # The backward ops have no autograd formula: with create_graph=True (double backward,
            # gradient penalties) the second derivative would silently be zero. Eager only: under
            # torch.compile AOTAutograd traces the backward with grad mode on by design.
            if torch.is_grad_enabled() and not torch.compiler.is_compiling():
                raise RuntimeError(f"fastdehaze: {name} has no double backward (create_graph=True): use "
                                   "backend='reference' for higher-order gradients")
            return backward(ctx, backward_op, *grads)

        torch.library.register_autograd(op, _bwd, setup_context=setup_context)

    def __call__(self, backend: str, *args):
        """Run the registered op of ``backend`` ("cpu", "cuda" or "triton")."""
        if backend == "triton":
            if self.triton is None:
                raise RuntimeError(f"fastdehaze: fastdehaze::{self.name} is a C++ CPU op (no Triton form)")
            return self.triton(*args)
        if self.native is None:
            raise RuntimeError(f"fastdehaze: the C++ op fastdehaze::{self.name} is not loaded: "
                               f"{_ext.native_error(self.family, 'cpu')}")
        return self.native(*args)

    def ops(self):
        """The registered forward ops (for opcheck in the tests)."""
        out = {} if self.triton is None else {"triton": self.triton}
        if self.native is not None:
            out["native"] = self.native
        return out


def _triton_launcher(family: str, name: str) -> Callable:
    """``fastdehaze.kernels.<family>.<name>``: imported now when triton imports (a custom op's
    implementation never runs inside a trace, but keeping imports out of every call path keeps
    the first ``torch.compile`` of a process free of them), else looked up at the first call
    (which then raises the ImportError)."""
    import importlib
    try:
        return getattr(importlib.import_module(f"fastdehaze.kernels.{family}"), name)
    except Exception:  # no triton (ImportError) or an incompatible one: raise at the first call
        pass

    def launch(*args):
        return getattr(importlib.import_module(f"fastdehaze.kernels.{family}"), name)(*args)

    launch.__name__ = name
    return launch


def _launch_device(args) -> Optional[torch.device]:
    """The device of the first tensor among ``args`` (lists of tensors included), or None."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, torch.Tensor):
                    return t.device
    return None


def _check_triton_device(op_name: str, dev: Optional[torch.device]) -> None:
    """RuntimeError for tensors the Triton kernels cannot run on: CPU tensors without the
    interpreter (Triton itself would raise a ValueError about a pointer), or a non-CUDA device."""
    if dev is None or dev.type == "cuda":
        return
    ok, why = _ext.triton_ready(dev.type)
    if not ok:
        raise RuntimeError(f"fastdehaze::{op_name} got {dev} tensors: {why}")


def _triton_guard(fn: Callable, op_name: str) -> Callable:
    """``fn`` run with the checks every Triton launch needs: the tensors' device must be one the
    kernels run on (:func:`_check_triton_device`), and CUDA tensors are launched under
    ``torch.cuda.device(their device)`` (Triton launches on the *current* device, not the
    tensors': without the guard, tensors on cuda:1 with cuda:0 current get foreign pointers)."""
    def launch(*args):
        dev = _launch_device(args)
        _check_triton_device(op_name, dev)
        if dev is not None and dev.type == "cuda":
            with torch.cuda.device(dev):
                return fn(*args)
        return fn(*args)

    launch.__name__ = getattr(fn, "__name__", op_name)
    launch.__wrapped__ = fn
    return launch


# ---- parameter normalisation -----------------------------------------------------------------

def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half inputs, float64 for float64, float32 for float32 (SPEC conventions)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_bc(value, name: str, B: int, C: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A broadcastable parameter (float, 0-d tensor, [B,1,1,1], [B,C,1,1] or [1,C,1,1]) as a
    contiguous [B, C] tensor of ``dtype`` (differentiable w.r.t. a tensor ``value``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        return torch.full((B, C), float(value), dtype=dtype, device=device)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the image is on {device}")
    if value.dim() == 0:
        v = value.reshape(1, 1)
    elif value.dim() == 4 and value.shape[2] == 1 and value.shape[3] == 1 and value.shape[0] in (1, B) \
            and value.shape[1] in (1, C):
        v = value.reshape(value.shape[0], value.shape[1])
    else:
        raise ValueError(f"{name} must be a float, a 0-d tensor, [B,1,1,1], [B,C,1,1] or [1,C,1,1] with "
                         f"B={B}, C={C}; got shape {tuple(value.shape)}")
    return v.to(dtype).expand(B, C).contiguous()
