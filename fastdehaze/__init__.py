"""fastdehaze: fused CPU / CUDA / Triton kernels for single-image dehazing.

``fastdehaze.ops`` holds the public functions (each with ``backend="auto" | "reference" |
"cpu" | "cuda" | "triton"``), ``fastdehaze.nn`` the drop-in modules, ``fastdehaze.reference``
the float64-exact PyTorch definitions every backend is tested against.
"""
from ._ext import available_backends, backend_report

__version__ = "0.1.0"
__all__ = ["available_backends", "backend_report", "__version__"]
