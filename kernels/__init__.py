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
import struct

import triton  # noqa: F401  (ImportError here marks the Triton backend unavailable)
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_size(n: int, gpu_block: int = 1024, interpret_cap: int = 16384) -> int:
    """Pixels per program: ``gpu_block`` on the GPU; under the interpreter as many as fit in
    ``interpret_cap`` (few large programs are much faster there)."""
    if INTERPRET:
        return max(16, min(triton.next_power_of_2(max(n, 1)), interpret_cap))
    return gpu_block


def split_f64(x: float) -> tuple[float, float]:
    """A Python float as a float32 pair (hi, lo) with hi + lo == x to about 2^-48 relative.

    On the GPU Triton passes every Python float as an fp32 kernel argument (the interpreter
    keeps it a weakly typed Python float, exact in float64): a float64 kernel must receive
    scalars as this pair and form them with :func:`join_f64`."""
    hi = struct.unpack("f", struct.pack("f", float(x)))[0]
    return hi, float(x) - hi


@triton.jit
def join_f64(hi, lo, like):
    """hi + lo (a :func:`split_f64` pair) in the dtype and shape of ``like`` (added in that
    dtype: float64 keeps both halves)."""
    return (tl.zeros_like(like) + hi) + lo


@triton.jit
def image_block(nblk, BLOCK: tl.constexpr):
    """(b, blk, offsets) of a program of a 1-D grid of B * nblk programs: image b, its pixel block
    blk, the int64 offsets blk * BLOCK + arange(BLOCK). The batch is folded into axis 0 (grid
    axes 1 and 2 stop at 65535 on a GPU, axis 0 at 2^31 - 1)."""
    pid = tl.program_id(0).to(tl.int64)
    blk = pid % nblk
    return pid // nblk, blk, blk * BLOCK + tl.arange(0, BLOCK)
