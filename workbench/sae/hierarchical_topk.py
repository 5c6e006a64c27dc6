"""HierarchicalTopK SAE (*Train One Sparse Autoencoder Across Multiple Sparsity Budgets*).

One dictionary trained so that every budget j in J = (j_1 < ... < j_G = k) works:

    (v, i) = the k largest pre-activations, sorted descending, ReLU'd       [N, k]
    x_hat_j = sum_{t < j} v_t * W_dec[i_t] + b_dec                       (the top-j prefix)
    loss    = (1/|J|) sum_{j in J} mean_n ||x - x_hat_j||^2 + AuxK

Because the top-j selection is the first j of the sorted top-k, one encoder pass serves
every budget, and at inference the L0 is a free choice: `encode(x, k=j)` for any
1 <= j <= k (the app's L0 slider). At the default budget (k) it is exactly a TopK SAE, so
the file is written as SAELens `topk` with that k; the budgets travel in the metadata.
"""

from __future__ import annotations

import torch

from workbench.errors import WorkbenchError
from workbench.sae.base import StepOutput, fired_from_indices, mse_sum
from workbench.sae.sparse_ops import sparse_decode
from workbench.sae.topk import TopKSAE


class HierarchicalTopKSAE(TopKSAE):
    """TopK whose every budget in cfg.k_budgets (and any j <= k at inference) reconstructs."""

    architecture = "hierarchical_topk"

    def _budget(self, k: int | None) -> int:
        k = self.cfg.k if k is None else int(k)
        if not 1 <= k <= self.cfg.k:
            raise WorkbenchError(f"budget k must be in [1, {self.cfg.k}] for this SAE, got {k}")
        return k

    def select_sorted(self, x: torch.Tensor, *, dead_mask=None, k_aux: int = 0):
        """Top-k (vals, idx) sorted by value descending, plus the AuxK pair."""
        vals, idx, aux_vals, aux_idx = self.select(x, self.cfg.k, dead_mask=dead_mask, k_aux=k_aux)
        order = vals.argsort(dim=-1, descending=True)
        return vals.gather(-1, order), idx.gather(-1, order), aux_vals, aux_idx

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Dense codes [..., d_sae] keeping the top `k` (default: the largest budget)."""
        budget = self._budget(k)
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        vals, idx, _, _ = self.select_sorted(x2.to(self.W_dec.dtype))
        vals, idx = vals[:, :budget], idx[:, :budget]
        codes = torch.zeros(x2.shape[0], self.cfg.d_sae, dtype=vals.dtype, device=x2.device).scatter(1, idx, vals)
        return codes.reshape(*lead, self.cfg.d_sae)

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Reconstruction [..., d_out] at budget `k` (default: the largest)."""
        budget = self._budget(k)
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        vals, idx, _, _ = self.select_sorted(x2.to(self.W_dec.dtype))
        out = self.decode_sparse(vals[:, :budget], idx[:, :budget])
        return out.reshape(*lead, self.cfg.d_out)

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0) -> StepOutput:
        target = x if target is None else target
        k_aux, num_dead = self.aux_k_for(dead_mask)
        vals, idx, aux_vals, aux_idx = self.select_sorted(x, dead_mask=dead_mask, k_aux=k_aux)
        x_hat = self.b_dec.expand(x.shape[0], -1)
        budget_losses, start = [], 0
        for budget in self.cfg.k_budgets:
            x_hat = x_hat + sparse_decode(vals[:, start:budget], idx[:, start:budget], self.W_dec, None)
            budget_losses.append(mse_sum(x_hat, target))
            start = budget
        recon = torch.stack(budget_losses).mean()
        loss = recon
        terms = {"mse": budget_losses[-1].detach(), "budget_mse_mean": recon.detach()}
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
