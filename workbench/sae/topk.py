"""TopK SAE (Gao et al., *Scaling and evaluating sparse autoencoders*).

    pre   = (x - b_dec) @ W_enc + b_enc                      [N, d_sae]
    z     = ReLU of the k largest entries of pre, 0 elsewhere   (exactly k per token)
    x_hat = z @ W_dec + b_dec                                 (a sparse gather of k rows)
    loss  = mean_n ||x - x_hat||^2 + AuxK

AuxK: the k_aux latents with the largest pre-activation among the *dead* ones (not fired
for a while, tracked by the trainer) reconstruct the residual e = x - x_hat; this gives dead
latents a gradient and revives them. Selection and decoding go through `sparse_ops`
(the kernels package when present), so no dense [N, d_sae] code is built while training.
The same rule is SAELens' `topk` architecture (ReLU after the selection).
"""

from __future__ import annotations

import torch

from workbench.sae.base import SparseAutoencoder, StepOutput, fired_from_indices, mse_sum
from workbench.sae.sparse_ops import topk_encode


class TopKSAE(SparseAutoencoder):
    """Exactly k active latents per token (fewer only where a selected pre-activation is <= 0)."""

    architecture = "topk"
    absolute = False  # AbsTopK selects by |pre| and keeps the sign

    def select(
        self, x: torch.Tensor, k: int, *, dead_mask: torch.Tensor | None = None, k_aux: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(vals [N,k], idx [N,k], aux_vals, aux_idx) for x [N, d_in]."""
        return topk_encode(
            self.center(x), self.W_enc, self.b_enc, k,
            dead_mask=dead_mask if k_aux else None, k_aux=k_aux, absolute=self.absolute,
        )

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx, _, _ = self.select(x, self.cfg.k)
        return torch.zeros(x.shape[0], self.cfg.d_sae, dtype=vals.dtype, device=x.device).scatter(1, idx, vals)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vals, idx) [..., k]: the compact form of `encode` (feature harvesting uses it)."""
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        vals, idx, _, _ = self.select(x2.to(self.W_dec.dtype), self.cfg.k)
        return vals.reshape(*lead, -1), idx.reshape(*lead, -1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx, _, _ = self.select(x, self.cfg.k)
        return self.decode_sparse(vals, idx)

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0) -> StepOutput:
        target = x if target is None else target
        k_aux, num_dead = self.aux_k_for(dead_mask)
        vals, idx, aux_vals, aux_idx = self.select(x, self.cfg.k, dead_mask=dead_mask, k_aux=k_aux)
        x_hat = self.decode_sparse(vals, idx)
        mse = mse_sum(x_hat, target)
        loss, terms = mse, {"mse": mse.detach()}
        if k_aux:
            aux = self.auxk_loss((target - x_hat).detach().float(), aux_vals, aux_idx, num_dead)
            loss = loss + aux
            terms["auxk"] = aux.detach()
        return StepOutput(
            loss=loss,
            x_hat=x_hat.detach(),
            l0=(vals != 0).sum(-1).float().mean().detach(),
            fired=fired_from_indices(idx, vals, self.cfg.d_sae),
            terms=terms,
        )
