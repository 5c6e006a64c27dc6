"""Matryoshka SAE (Bussmann et al., *Learning Multi-Level Features with Matryoshka SAEs*).

BatchTopK selection (see batchtopk.py), then every nested prefix of the dictionary must
reconstruct on its own. With prefix widths m_1 < ... < m_G = d_sae:

    x_hat_g = sum_{i < m_g} z_i * W_dec[i] + b_dec
    loss    = (1/G) sum_g mean_n ||x - x_hat_g||^2 + AuxK (on the full reconstruction)

The first latents are pushed to carry the coarse, frequent structure (they must work
alone); later ones add detail. This curbs feature absorption. Inference is BatchTopK's
threshold rule over the whole dictionary; any prefix can be used by zeroing the codes
past it (`forward_prefix`).
"""

from __future__ import annotations

import torch

from workbench.errors import WorkbenchError
from workbench.sae.base import mse_sum
from workbench.sae.batchtopk import BatchTopKSAE
from workbench.sae.sparse_ops import ragged_decode


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose nested dictionary prefixes each reconstruct."""

    architecture = "matryoshka"

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0):
        target = x if target is None else target
        k_aux, num_dead = self.aux_k_for(dead_mask)
        rows, cols, vals, aux_vals, aux_idx = self.selected_entries(x, dead_mask, k_aux)
        x_hat = self.b_dec.expand(x.shape[0], -1)
        prefix_losses = []
        start = 0
        for width in self.cfg.matryoshka_widths:
            group = (cols >= start) & (cols < width)
            x_hat = x_hat + ragged_decode(rows[group], cols[group], vals[group], x.shape[0], self.W_dec)
            prefix_losses.append(mse_sum(x_hat, target))
            start = width
        recon = torch.stack(prefix_losses).mean()
        loss = recon
        terms = {"mse": prefix_losses[-1].detach(), "prefix_mse_mean": recon.detach()}
        loss, terms = self._add_auxk(loss, terms, aux_vals, aux_idx, num_dead, target, x_hat)
        return self._output(loss, x_hat, x.shape[0], cols, vals, terms)

    def forward_prefix(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """Reconstruction [..., d_out] from the first `width` latents only."""
        if not 1 <= width <= self.cfg.d_sae:
            raise WorkbenchError(f"prefix width must be in [1, {self.cfg.d_sae}], got {width}")
        codes = self.encode(x)
        codes[..., width:] = 0
        return self.decode(codes)
