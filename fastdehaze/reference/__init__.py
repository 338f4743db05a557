"""The PyTorch definitions of every op (SPEC.md): the oracle all backends are tested against in
float64, and the ``backend="reference"`` of ``fastdehaze.ops``. Half inputs are computed in
float32 and returned in their dtype, float64 in float64; autograd is PyTorch's own.
Modules: asm, dcp, filters, patch, contrastive, depth_difference (import them by name)."""
