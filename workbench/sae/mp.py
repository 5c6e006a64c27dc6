"""Matching-pursuit SAE (Costa et al., *From Flat to Hierarchical*; SAELens `matching_pursuit`).

A tied dictionary: there is no separate encoder; the codes come from k greedy steps of
matching pursuit over the unit-norm decoder atoms d_i = W_dec[i]:

    r_0 = x - b_dec
    for t in 1..k:  j_t = argmax_i <r_{t-1}, d_i>,   a_t = max(<r_{t-1}, d_{j_t}>, 0)
                    z_{j_t} += a_t,                  r_t = r_{t-1} - a_t d_{j_t}
    x_hat = x - r_k = z @ W_dec + b_dec
    loss  = mean_n ||x - x_hat||^2 + AuxK (dead atoms ranked by <r_0, d_i>)

Each step removes the residual's component along the chosen unit atom, so
||r_t||^2 = ||r_{t-1}||^2 - a_t^2: the residual norm never increases. Later atoms are
chosen *given* earlier ones (conditional, hierarchical features). Gradients flow through
the unrolled steps. A token stops early when ||r|| < mp_residual_threshold (0: never).
Each step costs a full [N, d_in] x [d_in, d_sae] product, so training is about k times
slower than TopK. `W_enc` is W_dec.T (read-only) for tools that want encoder directions.

SAELens' MatchingPursuitSAE runs until the support stops changing or the residual is
below its threshold rather than a fixed k, so SAELens may take more steps on our files.
"""

from __future__ import annotations

import torch

from workbench.errors import WorkbenchError
from workbench.sae.base import SparseAutoencoder, StepOutput, mse_sum
from workbench.sae.batchtopk import aux_from_pre


class MatchingPursuitSAE(SparseAutoencoder):
    """k residual-guided greedy selections over the decoder atoms."""

    architecture = "mp"
    has_encoder = False

    @property
    def W_enc(self) -> torch.Tensor:
        """The tied encoder directions [d_in, d_sae] (W_dec transposed)."""
        return self.W_dec.T

    def pursue(self, x: torch.Tensor, steps: int | None = None, *, residual_norms: list | None = None):
        """Run matching pursuit on x [N, d_in]: returns (codes [N, d_sae], residual [N, d_in]).

        If residual_norms is a list, ||r_t|| [N] is appended after every step (t = 0..steps).
        """
        steps = self.cfg.k if steps is None else int(steps)
        if not 1 <= steps <= self.cfg.d_in:
            raise WorkbenchError(f"steps must be in [1, d_in={self.cfg.d_in}], got {steps}")
        residual = self.center(x)
        codes = torch.zeros(x.shape[0], self.cfg.d_sae, dtype=residual.dtype, device=x.device)
        stop = self.cfg.mp_residual_threshold
        if residual_norms is not None:
            residual_norms.append(residual.detach().norm(dim=-1))
        for _ in range(steps):
            corr = residual @ self.W_dec.T
            amount, j = corr.max(dim=-1)
            amount = torch.relu(amount)
            if stop > 0:
                amount = amount * (residual.detach().norm(dim=-1) >= stop).to(amount.dtype)
            codes = codes.index_put((torch.arange(x.shape[0], device=x.device), j), amount, accumulate=True)
            residual = residual - amount[:, None] * self.W_dec[j]
            if residual_norms is not None:
                residual_norms.append(residual.detach().norm(dim=-1))
        return codes, residual

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pursue(x)[0]

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Dense codes [..., d_sae] after k pursuit steps (default cfg.k)."""
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        return self.pursue(x2.to(self.W_dec.dtype), k)[0].reshape(*lead, self.cfg.d_sae)

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Reconstruction [..., d_in] after k pursuit steps (default cfg.k)."""
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        x2 = x2.to(self.W_dec.dtype)
        _, residual = self.pursue(x2, k)
        return (x2 - residual).reshape(*lead, self.cfg.d_in)

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0) -> StepOutput:
        codes, residual = self.pursue(x)
        x_hat = x - residual
        mse = mse_sum(x_hat, x)
        loss, terms = mse, {"mse": mse.detach()}
        k_aux, num_dead = self.aux_k_for(dead_mask)
        if k_aux:
            first_corr = self.center(x) @ self.W_dec.T
            aux_vals, aux_idx = aux_from_pre(first_corr, dead_mask, k_aux)
            aux = self.auxk_loss(residual.detach().float(), aux_vals, aux_idx, num_dead)
            loss = loss + aux
            terms["auxk"] = aux.detach()
        active = codes.detach() != 0
        return StepOutput(
            loss=loss,
            x_hat=x_hat.detach(),
            l0=active.sum(-1).float().mean(),
            fired=active.any(0),
            terms=terms,
        )
