"""BatchTopK selection in plain torch: the specification of the op.

    flat_idx = the n largest entries of values (flattened), as indices into values.view(-1),
               in ascending order; int64 [n].

BatchTopK SAEs keep the k*N largest pre-activations of a batch of N tokens (not k per
token): `values` is ReLU(pre) [N, d_sae] and n = k*N; row = flat_idx // d_sae, latent =
flat_idx % d_sae. Among equal values at the n-th place the choice is unspecified (the
choice is torch.topk's). No gradient: the caller gathers the values it needs from
`values`, which keeps its autograd graph. This is also what runs on the GPU: torch.topk
with k = n and a sort of the n indices took 3.1 ms at 4096 x 65536 bf16 on the H200,
where an exact three-pass Triton radix select took 10.2 ms.
"""

from __future__ import annotations

import torch


def batch_topk_indices(values: torch.Tensor, n: int) -> torch.Tensor:
    """[n] int64, ascending flat indices of the n largest entries of `values`."""
    flat = values.reshape(-1)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    return flat.topk(n, sorted=False).indices.sort().values
