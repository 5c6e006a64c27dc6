"""torch.library custom ops over the row-upkeep kernels (in place; no autograd: they run on
weights and gradients between steps, under no_grad). Registered so that opcheck and
torch.compile see their mutation; the Triton module is imported on first use."""

from __future__ import annotations

import torch


@torch.library.custom_op("workbench::remove_parallel_component_", mutates_args=("grad",))
def remove_parallel_component_op(grad: torch.Tensor, weight: torch.Tensor) -> None:
    """grad[m] -= <grad[m], weight[m]> weight[m] for every row m (Triton)."""
    from workbench.kernels.rows import triton as kernels

    kernels.remove_parallel_component_(grad, weight)


@torch.library.custom_op("workbench::normalize_rows_", mutates_args=("weight",))
def normalize_rows_op(weight: torch.Tensor) -> None:
    """weight[m] /= max(||weight[m]||, 1e-12) for every row m (Triton)."""
    from workbench.kernels.rows import triton as kernels

    kernels.normalize_rows_(weight)
