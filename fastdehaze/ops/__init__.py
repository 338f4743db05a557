"""Public fused ops of fastdehaze (SPEC section 7). Each takes ``backend=`` ("auto",
"reference", "cpu", "cuda", "triton"); see ``fastdehaze.ops._dispatch`` for how that maps onto
registered ops, and ``fastdehaze.ops._checks`` for which argument checks cost a sync."""
from ._checks import set_value_checks
from .asm import recover

__all__ = ["set_value_checks", "recover"]
