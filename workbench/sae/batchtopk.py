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

On GPU, for large batches, training takes its selection from each token's CANDIDATES_PER_K x k
largest pre-activations (`topk_encode`: no dense [N, d_sae] gradient, the fast AuxK), exact
unless a token needs more (then the dense pre-activations answer), and decodes the ragged
codes with the sparse-decode kernels (`sparse_ops.ragged_decode`): 1.57x faster steps at
d_in 2304, d_sae 65536 on the H200 (bench/README.md).
"""

from __future__ import annotations

import torch

from workbench.sae.base import SparseAutoencoder, StepOutput, mse_sum
from workbench.sae.sparse_ops import kernels_pay, ragged_decode, topk_encode


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


CANDIDATES_PER_K = 4
"""The kernel route's candidates: each token's CANDIDATES_PER_K x k largest pre-activations."""


def batch_topk_from_candidates(
    cand_vals: torch.Tensor, cand_idx: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """batch_topk_entries computed from each row's K largest entries only.

    cand_vals [N, K] (ReLU'd, in the autograd graph), cand_idx [N, K] (ascending latents per
    row, as topk_encode returns them). The batch's k*N largest entries all lie among the
    candidates unless a row had all K of its (positive) candidates selected: its (K+1)-th
    value could then belong to the batch's top too, so the answer is None and the caller
    selects from the full pre-activations. Synchronises with the host (the count check).
    """
    n, width = cand_vals.shape
    flat = cand_vals.reshape(-1)
    top = flat.detach().topk(min(k * n, flat.numel()), sorted=False).indices.sort().values
    vals = flat[top]
    keep = vals.detach() > 0
    top, vals = top[keep], vals[keep]
    rows = top // width
    if rows.numel() and int(torch.bincount(rows, minlength=n).max()) >= width:
        return None
    return rows, cand_idx.reshape(-1)[top], vals


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
    def selected_entries(self, x: torch.Tensor, dead_mask=None, k_aux: int = 0) -> tuple[torch.Tensor, ...]:
        """(rows, cols, vals) of the batch's k*N largest ReLU'd pre-activations, rows ascending,
        and (aux_vals, aux_idx) [N, k_aux], each token's AuxK selection among the dead latents.

        Where the TopK encoder's kernels run (GPU) and the batch is large enough for it to
        pay (the ragged decode's rule), the selection reads each token's CANDIDATES_PER_K x k
        largest pre-activations from `topk_encode`, whose backward is sparse and whose AuxK
        selection is the fast one; otherwise, or when a token would need more than its
        candidates, from the dense [N, d_sae] pre-activations.
        """
        k = self.cfg.k
        width = min(self.cfg.d_sae, CANDIDATES_PER_K * k)
        if width < self.cfg.d_sae and kernels_pay("topk_encode", x, x.shape[0], self.W_dec):
            cand_vals, cand_idx, aux_vals, aux_idx = topk_encode(
                self.center(x), self.W_enc, self.b_enc, width, dead_mask=dead_mask if k_aux else None, k_aux=k_aux)
            entries = batch_topk_from_candidates(cand_vals, cand_idx, k)
            if entries is not None:
                return (*entries, aux_vals, aux_idx)
        pre = self.center(x) @ self.W_enc + self.b_enc
        aux_vals, aux_idx = aux_from_pre(pre, dead_mask, k_aux) if k_aux else (None, None)
        return (*batch_topk_entries(pre, k), aux_vals, aux_idx)

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0) -> StepOutput:
        target = x if target is None else target
        k_aux, num_dead = self.aux_k_for(dead_mask)
        rows, cols, vals, aux_vals, aux_idx = self.selected_entries(x, dead_mask, k_aux)
        x_hat = ragged_decode(rows, cols, vals, x.shape[0], self.W_dec, self.b_dec)
        mse = mse_sum(x_hat, target)
        loss, terms = mse, {"mse": mse.detach()}
        loss, terms = self._add_auxk(loss, terms, aux_vals, aux_idx, num_dead, target, x_hat)
        return self._output(loss, x_hat, x.shape[0], cols, vals, terms)

    def _add_auxk(self, loss, terms, aux_vals, aux_idx, num_dead, target, x_hat):
        if aux_vals is not None:
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
