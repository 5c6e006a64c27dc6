"""BatchTopK SAE (Bussmann et al.; the "Mutual Choice" budget of Ayonrinde).

Training, on a batch of N tokens:

    pre   = (x - b_dec) @ W_enc + b_enc                       [N, d_sae]
    z     = the k*N largest entries of ReLU(pre) over the whole batch, 0 elsewhere
    x_hat = z @ W_dec + b_dec
    loss  = mean_n ||x - x_hat||^2 + AuxK

so the batch mean L0 is exactly k while single tokens take more or fewer latents. After
each step the smallest selected activation feeds an exponential moving average, the
threshold theta. At inference (eval mode) the batch is gone and each token keeps the
latents with pre > theta: a JumpReLU with one shared threshold, which is how the file is
written (SAELens saves BatchTopK as `jumprelu` with threshold = theta for every latent).
"""

from __future__ import annotations

import torch

from workbench.sae.base import SparseAutoencoder, StepOutput, mse_sum
from workbench.sae.sparse_ops import ragged_decode


def batch_topk_entries(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k*N largest entries of ReLU(pre) [N, d_sae] as (rows, cols, vals) [E], rows sorted.

    Entries equal to zero (when fewer than k*N are positive) are dropped. vals keep the
    autograd graph to `pre`.
    """
    n, d_sae = pre.shape
    flat = torch.relu(pre).reshape(-1)
    vals, flat_idx = flat.topk(min(k * n, flat.numel()), sorted=False)
    order = flat_idx.argsort()
    flat_idx, vals = flat_idx[order], vals[order]
    keep = vals > 0
    flat_idx, vals = flat_idx[keep], vals[keep]
    return flat_idx // d_sae, flat_idx % d_sae, vals


def aux_from_pre(pre: torch.Tensor, dead_mask: torch.Tensor, k_aux: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AuxK selection from dense pre-activations: top k_aux ReLU'd values among dead latents."""
    masked = pre.masked_fill(~dead_mask, float("-inf"))
    vals, idx = masked.topk(k_aux, dim=-1, sorted=False)
    return torch.relu(vals), idx


class BatchTopKSAE(SparseAutoencoder):
    """k active latents per token on average over a batch; a learned threshold at inference."""

    architecture = "batchtopk"

    def __init__(self, cfg, *, device=None, seed=0):
        super().__init__(cfg, device=device, seed=seed)
        # theta < 0 means "not estimated yet": inference then falls back to the batch rule.
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32, device=self.W_dec.device))
        self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.int64, device=self.W_dec.device))

    # ------------------------------------------------------------------ inference
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.center(x) @ self.W_enc + self.b_enc
        if self.training or float(self.threshold) < 0:
            rows, cols, vals = batch_topk_entries(pre, self.cfg.k)
            return torch.zeros_like(pre).index_put((rows, cols), vals)
        return torch.relu(pre) * (pre > self.threshold.to(pre.dtype))

    # ------------------------------------------------------------------ training
    def selected_entries(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pre = self.center(x) @ self.W_enc + self.b_enc
        rows, cols, vals = batch_topk_entries(pre, self.cfg.k)
        return pre, rows, cols, vals

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0) -> StepOutput:
        target = x if target is None else target
        pre, rows, cols, vals = self.selected_entries(x)
        x_hat = ragged_decode(rows, cols, vals, x.shape[0], self.W_dec, self.b_dec)
        mse = mse_sum(x_hat, target)
        loss, terms = mse, {"mse": mse.detach()}
        loss, terms = self._add_auxk(loss, terms, pre, target, x_hat, dead_mask)
        return self._output(loss, x_hat, x.shape[0], cols, vals, terms)

    def _add_auxk(self, loss, terms, pre, target, x_hat, dead_mask):
        k_aux, num_dead = self.aux_k_for(dead_mask)
        if k_aux:
            aux_vals, aux_idx = aux_from_pre(pre, dead_mask, k_aux)
            aux = self.auxk_loss((target - x_hat).detach().float(), aux_vals, aux_idx, num_dead)
            loss = loss + aux
            terms["auxk"] = aux.detach()
        return loss, terms

    def _output(self, loss, x_hat, n, cols, vals, terms) -> StepOutput:
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=cols.device)
        fired[cols] = True
        min_active = vals.detach().min().float() if vals.numel() else torch.tensor(0.0, device=cols.device)
        return StepOutput(
            loss=loss,
            x_hat=x_hat.detach(),
            l0=torch.tensor(vals.numel() / max(n, 1), device=cols.device),
            fired=fired,
            terms=terms,
            stats={"min_active": min_active},
        )

    @torch.no_grad()
    def observe(self, stats: dict[str, torch.Tensor]) -> None:
        """Fold the batch's smallest selected activation into theta: a running mean over the
        first 1/(1-beta) steps (so short runs are not stuck near the random-init value),
        an exponential moving average with decay beta after."""
        value = stats.get("min_active")
        if value is None:
            return
        n = int(self.threshold_updates)
        beta = min(self.cfg.threshold_beta, n / (n + 1.0))
        current = self.threshold.clamp_min(0.0) if n else torch.zeros_like(self.threshold)
        self.threshold.copy_(beta * current + (1 - beta) * value.to(self.threshold))
        self.threshold_updates += 1

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor) -> float:
        """Set theta from the final weights on a sample x [N, d_in] (inputs as in training):
        the smallest of the k*N values BatchTopK selects on it, so that inference keeps k
        latents per token on average there. The running average of `observe` mixes in the
        thresholds of earlier weights; this replaces it at the end of training."""
        pre = self.center(x.to(self.W_dec.dtype)) @ self.W_enc + self.b_enc
        _, _, vals = batch_topk_entries(pre, self.cfg.k)
        if vals.numel():
            self.threshold.fill_(float(vals.min()))
            self.threshold_updates.add_(1)
        return float(self.threshold)

    def _fold_thresholds(self, scale_out: float) -> None:
        if float(self.threshold) >= 0:
            self.threshold.div_(scale_out)
