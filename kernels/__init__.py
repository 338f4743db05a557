"""Triton kernels of fastdehaze (installed as ``fastdehaze.kernels``).

One module per op family with the same name as in csrc/ and fastdehaze/ops/. Each module has
the ``@triton.jit`` kernels and plain launch functions taking and returning tensors; the
registered ops that call them live in ``fastdehaze.ops``.

Conventions: program ids are promoted to int64 before computing offsets; every load is masked,
with the identity of the reduction as ``other``; half inputs are loaded, converted to float32,
computed and converted back on store (the CPU interpreter computes bf16 arithmetic wrongly);
float64 inputs are computed in float64.

``@triton.jit`` reads ``TRITON_INTERPRET`` when this package is first imported: with
``TRITON_INTERPRET=1`` the kernels run on CPU tensors (slowly) and not on the GPU.
"""
import os

import triton  # noqa: F401  (ImportError here marks the Triton backend unavailable)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_size(n: int, gpu_block: int = 1024, interpret_cap: int = 16384) -> int:
    """Pixels per program: ``gpu_block`` on the GPU; under the interpreter as many as fit in
    ``interpret_cap`` (few large programs are much faster there)."""
    if INTERPRET:
        return max(16, min(triton.next_power_of_2(max(n, 1)), interpret_cap))
    return gpu_block
