"""JumpReLU SAE (Rajamanoharan et al., *Jumping Ahead*).

    pre   = (x - b_dec) @ W_enc + b_enc
    z_i   = pre_i * H(pre_i - theta_i)          theta_i = ReLU(threshold_i) >= 0
    x_hat = z @ W_dec + b_dec
    loss  = mean_n ||x - x_hat||^2 + lambda * s * mean_n sum_i H(pre_i - theta_i)

The Heaviside step H has no useful gradient, so theta learns through straight-through
estimators with a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps:

    d z_i / d theta_i  = -(theta_i / eps) * K((pre_i - theta_i) / eps)
    d H_i / d theta_i  = -(1 / eps)       * K((pre_i - theta_i) / eps)

and pre gets the plain gradient of z where the unit is open. The L0 term trains sparsity
directly, with no L1 shrinkage of the active codes. The threshold is a plain parameter
(as SAELens and dictionary_learning do; a log-parameterised one barely moves under Adam).
Codes are exactly zero below the threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.sae.base import SparseAutoencoder, StepOutput, mse_sum
from workbench.sae.sparse_ops import ragged_decode


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - theta) with the straight-through gradient for theta."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > theta).to(grad.dtype)
        grad_theta = (-(theta / eps) * _rectangle((pre - theta) / eps) * grad).sum(0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    """H(pre - theta) with the straight-through gradient for theta (none for pre)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * _rectangle((pre - theta) / eps) * grad).sum(0)
        return None, grad_theta, None


class JumpReluSAE(SparseAutoencoder):
    """Per-latent thresholds; L0 trained through straight-through estimators."""

    architecture = "jumprelu"

    def __init__(self, cfg, *, device=None, seed=0):
        super().__init__(cfg, device=device, seed=seed)
        self.threshold = nn.Parameter(
            torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold, dtype=self.W_dec.dtype, device=self.W_dec.device)
        )

    def theta(self) -> torch.Tensor:
        """The effective thresholds [d_sae] (ReLU'd: a negative parameter means 0)."""
        return torch.relu(self.threshold)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.center(x) @ self.W_enc + self.b_enc
        return torch.relu(pre) * (pre > self.theta()).to(pre.dtype)

    def training_step(self, x, target=None, *, dead_mask=None, sparsity_scale=1.0) -> StepOutput:
        target = x if target is None else target
        pre = self.center(x) @ self.W_enc + self.b_enc
        theta = self.theta()
        z = _JumpReLU.apply(pre, theta, self.cfg.jumprelu_bandwidth)
        rows, cols = z.detach().nonzero(as_tuple=True)
        if rows.numel() < 0.05 * z.numel():  # sparse enough: the ragged decode (kernels on GPU)
            x_hat = ragged_decode(rows, cols, z[rows, cols], x.shape[0], self.W_dec, self.b_dec)
        else:
            x_hat = z @ self.W_dec + self.b_dec
        mse = mse_sum(x_hat, target)
        l0 = _Step.apply(pre, theta, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        loss = mse + self.cfg.l0_coefficient * sparsity_scale * l0
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[cols] = True
        return StepOutput(
            loss=loss,
            x_hat=x_hat.detach(),
            l0=torch.tensor(rows.numel() / max(x.shape[0], 1), device=x.device),
            fired=fired,
            terms={"mse": mse.detach(), "l0_penalty": l0.detach()},
        )

    def _fold_thresholds(self, scale_out: float) -> None:
        self.threshold.div_(scale_out)
