"""torch.library registration of the Triton BatchTopK selection.

`workbench::batch_topk_indices(values, n) -> [n] int64`: integer output, so no autograd
formula (the caller gathers differentiable values with the indices). The reference path
is the plain function in reference.py. Importing this module registers the op (cheap:
triton is imported by the op body on first use).
"""

from __future__ import annotations

import torch


@torch.library.custom_op("workbench::batch_topk_indices", mutates_args=())
def batch_topk_indices_op(values: torch.Tensor, n: int) -> torch.Tensor:
    """Ascending flat indices [n] of the n largest entries of values (Triton)."""
    from workbench.kernels.batch_topk import triton as kernels

    return kernels.batch_topk_indices(values, n)


@batch_topk_indices_op.register_fake
def _batch_topk_indices_fake(values, n):
    return values.new_empty((n,), dtype=torch.long)
