"""Public fused ops of fastdehaze (SPEC section 7). Each takes ``backend=`` ("auto",
"reference", "cpu", "cuda", "triton"); see ``fastdehaze.ops._dispatch`` for how that maps onto
registered ops, and ``fastdehaze.ops._checks`` for which argument checks cost a sync."""
from ._checks import set_value_checks  # noqa: F401
from ._dispatch import BACKENDS  # noqa: F401

# One line per op family (each family's owner edits only its own line).
from .asm import *  # noqa: F401,F403  (asm)
from .dcp import *  # noqa: F401,F403  (dcp)
from .filters import *  # noqa: F401,F403  (filters)
from .patch import *  # noqa: F401,F403  (patch)
from .contrastive import *  # noqa: F401,F403  (contrastive)
from .depth_difference import *  # noqa: F401,F403  (depth_difference)
