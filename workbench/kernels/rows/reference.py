"""Plain-torch spec of the decoder-row upkeep (fp32 arithmetic), run after every step.

weight [d_sae, d_out] holds one dictionary direction per row, kept at unit L2 norm:
- remove_parallel_component_(grad, weight): grad[m] -= <grad[m], weight[m]> * weight[m]
  (the step then moves each unit row along its sphere);
- normalize_rows_(weight): weight[m] /= max(||weight[m]||, eps).
Both work in place and return the tensor they changed.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def remove_parallel_component_(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    w = weight.float()
    parallel = (grad.float() * w).sum(dim=1, keepdim=True)
    grad.copy_(grad.float() - parallel * w)
    return grad


def normalize_rows_(weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    w = weight.float()
    weight.copy_(w / w.norm(dim=1, keepdim=True).clamp_min(eps))
    return weight
