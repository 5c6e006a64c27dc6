"""ReLU SAE with an L1 penalty (the "standard" SAE; SAELens architecture `standard`).

    pre   = (x - b_dec) @ W_enc + b_enc
    z     = ReLU(pre)
    x_hat = z @ W_dec + b_dec
    loss  = mean_n ||x - x_hat||^2 + lambda * s * mean_n sum_i z_i * ||W_dec[i]||

lambda is `l1_coefficient`, s the trainer's sparsity warm-up factor (0 -> 1). Weighting
each code by its decoder-row norm makes the penalty invariant to trading scale between
z_i and W_dec[i]; with rows held at unit norm it is the plain L1 of the codes.
The L1 term shrinks codes (the reconstruction is biased low), which `shrinkage` in the
evaluations measures.
"""

from __future__ import annotations

import torch

from workbench.sae.base import SparseAutoencoder, StepOutput, mse_sum


class ReluSAE(SparseAutoencoder):
    """ReLU codes; sparsity from the L1 penalty, not from a hard rule."""

    architecture = "relu"

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.center(x) @ self.W_enc + self.b_enc)

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0) -> StepOutput:
        target = x if target is None else target
        z = self._encode(x)
        x_hat = z @ self.W_dec + self.b_dec
        mse = mse_sum(x_hat, target)
        l1 = (z.float() * self.W_dec.norm(dim=1).float()).sum(-1).mean()
        loss = mse + self.cfg.l1_coefficient * sparsity_scale * l1
        active = z.detach() != 0
        return StepOutput(
            loss=loss,
            x_hat=x_hat.detach(),
            l0=active.sum(-1).float().mean(),
            fired=active.any(0),
            terms={"mse": mse.detach(), "l1": l1.detach()},
        )
