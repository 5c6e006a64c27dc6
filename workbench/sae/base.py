"""`SparseAutoencoder`: the interface every architecture shares, and what they share.

Interface (x [..., d_in] with any leading dims; codes [..., d_sae]; output [..., d_out]):

    encode(x)  -> codes     dense latent activations, inference rule of the architecture
    decode(z)  -> x_hat     z @ W_dec + b_dec
    forward(x) -> x_hat     decode(encode(x)), through sparse kernels where the codes are k-sparse
    training_step(x, target, dead_mask=..., sparsity_scale=...) -> StepOutput
                            the training loss of the architecture on a batch [N, d_in]

Parameters follow the SAELens v6 names and shapes: W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_out], b_dec [d_out]; pre-activations are
`pre = (x - b_dec) @ W_enc + b_enc` (the `- b_dec` only when `apply_b_dec_to_input`).

Shared mechanics: decoder rows at unit norm (renormalised after each step, the gradient's
component parallel to each row removed before it), `b_dec` initialised from the data
(geometric median of the inputs, or the mean of the targets for a transcoder), constant
activation scaling folded into the weights (`fold_scaling`) so saved files work on raw
activations, and dead-latent bookkeeping through `StepOutput.fired`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.sae.config import SaeConfig
from workbench.sae.sparse_ops import normalize_rows_, ragged_decode, remove_parallel_grad_, sparse_decode

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass
class StepOutput:
    """What one training step of one dictionary produced.

    loss: scalar to back-propagate. x_hat: [N, d_out] reconstruction (detached).
    l0: mean active latents per token (detached scalar). fired: [d_sae] bool, latents
    active on at least one token of the batch. terms: named detached loss parts.
    stats: values the trainer reduces across ranks and hands back through `observe`
    (e.g. BatchTopK's smallest selected activation, reduced with MIN).
    """

    loss: torch.Tensor
    x_hat: torch.Tensor
    l0: torch.Tensor
    fired: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class SparseAutoencoder(nn.Module):
    """Base class: parameters, shape handling, decoder constraints, folding, AuxK."""

    architecture: ClassVar[str] = ""
    has_encoder: ClassVar[bool] = True  # False for tied dictionaries (mp)

    def __init__(self, cfg: SaeConfig, *, device: torch.device | str | None = None, seed: int | None = 0):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise WorkbenchError(f"{type(self).__name__} got a config for {cfg.architecture!r}")
        self.cfg = cfg
        dtype = TORCH_DTYPES[cfg.dtype]
        if self.has_encoder:
            self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, dtype=dtype, device=device))
            self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_out, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype, device=device))
        self.reset_parameters(seed)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, seed: int | None = 0) -> None:
        """Random unit-norm decoder rows; the encoder is their transpose (an autoencoder)
        or an independent random map with unit columns (a transcoder). Biases zero."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else int(seed))
        cfg = self.cfg
        W_dec = torch.randn(cfg.d_sae, cfg.d_out, generator=gen, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(W_dec)
        self.b_dec.zero_()
        if self.has_encoder:
            if cfg.transcoder:
                W_enc = torch.randn(cfg.d_in, cfg.d_sae, generator=gen, dtype=torch.float32)
                W_enc /= W_enc.norm(dim=0, keepdim=True).clamp_min(1e-12)
            else:
                W_enc = W_dec.T.clone()
            self.W_enc.copy_(W_enc)
            self.b_enc.zero_()

    @torch.no_grad()
    def initialize_from_data(self, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Set b_dec from a sample: the geometric median of x [N, d_in] for an autoencoder
        (the point the codes are measured from), the mean of target [N, d_out] for a
        transcoder (its output bias)."""
        if self.cfg.transcoder:
            if target is None:
                raise WorkbenchError("a transcoder needs the target sample to initialise b_dec")
            self.b_dec.copy_(target.float().mean(0).to(self.b_dec))
        else:
            self.b_dec.copy_(geometric_median(x.float()).to(self.b_dec))

    # ------------------------------------------------------------------ shapes
    def _flat(self, x: torch.Tensor, width: int, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
        if x.shape[-1] != width:
            raise WorkbenchError(
                f"{what} has width {x.shape[-1]} but this SAE expects {width} "
                f"(site {self.cfg.site or '?'}); check the site and the model"
            )
        return x.reshape(-1, width), tuple(x.shape[:-1])

    def center(self, x: torch.Tensor) -> torch.Tensor:
        """x - b_dec when apply_b_dec_to_input (SAELens' convention), else x."""
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [..., d_sae] = center(x) @ W_enc + b_enc."""
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        x2 = x2.to(self.W_dec.dtype)
        return (self.center(x2) @ self.W_enc + self.b_enc).reshape(*lead, self.cfg.d_sae)

    # ------------------------------------------------------------------ interface
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes [..., d_sae] under the architecture's inference rule."""
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        return self._encode(x2.to(self.W_dec.dtype)).reshape(*lead, self.cfg.d_sae)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., d_sae] -> [..., d_out] = codes @ W_dec + b_dec."""
        z2, lead = self._flat(codes, self.cfg.d_sae, "the codes")
        return self.decode_dense(z2.to(self.W_dec.dtype)).reshape(*lead, self.cfg.d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (or, for a transcoder, prediction) [..., d_out] of x [..., d_in]."""
        x2, lead = self._flat(x, self.cfg.d_in, "the input")
        return self._forward(x2.to(self.W_dec.dtype)).reshape(*lead, self.cfg.d_out)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:  # [N, d_in] -> [N, d_sae]
        raise WorkbenchError(f"{type(self).__name__} does not define _encode")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, d_in] -> [N, d_out]
        return self.decode_dense(self._encode(x))

    def training_step(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        dead_mask: torch.Tensor | None = None,
        sparsity_scale: float = 1.0,
    ) -> StepOutput:
        """Loss on a batch x [N, d_in] (target [N, d_out]; None = x)."""
        raise WorkbenchError(f"{type(self).__name__} does not define training_step")

    def observe(self, stats: dict[str, torch.Tensor]) -> None:
        """Take the (rank-reduced) `StepOutput.stats` after a step; most architectures ignore it."""

    # ------------------------------------------------------------------ decoding
    def decode_dense(self, z: torch.Tensor) -> torch.Tensor:
        """[N, d_sae] -> [N, d_out]. Mostly-zero codes on CPU go through a sparse bag sum
        (no dense matmul over d_sae); otherwise one matmul."""
        if z.device.type == "cpu" and z.requires_grad is False and z.shape[0] > 0:
            nnz = torch.count_nonzero(z)
            if int(nnz) < 0.05 * z.numel():
                rows, cols = z.nonzero(as_tuple=True)
                return ragged_decode(rows, cols, z[rows, cols], z.shape[0], self.W_dec, self.b_dec)
        return z @ self.W_dec + self.b_dec

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """vals / idx [N, k] -> [N, d_out] through the sparse-decode kernel (+ b_dec)."""
        return sparse_decode(vals, idx, self.W_dec, self.b_dec)

    # ------------------------------------------------------------------ AuxK
    def auxk_loss(
        self, residual: torch.Tensor, aux_vals: torch.Tensor, aux_idx: torch.Tensor, num_dead: int
    ) -> torch.Tensor:
        """Gao et al.'s AuxK: the top k_aux dead latents model the residual e = x - x_hat.

        loss = alpha * min(num_dead / k_aux, 1) * mean_n ||e_n - e_hat_n||^2 with
        e_hat = aux codes @ W_dec (no bias); residual is detached by the caller.
        """
        e_hat = sparse_decode(aux_vals, aux_idx, self.W_dec, None)
        scale = min(num_dead / self.cfg.resolved_aux_k, 1.0)
        return self.cfg.aux_k_coefficient * scale * (e_hat - residual).pow(2).sum(-1).mean()

    def aux_k_for(self, dead_mask: torch.Tensor | None) -> tuple[int, int]:
        """(k_aux to use this step, number of dead latents); (0, 0) when AuxK is off."""
        if dead_mask is None or self.cfg.aux_k_coefficient == 0:
            return 0, 0
        num_dead = int(dead_mask.sum())
        return min(self.cfg.resolved_aux_k, num_dead), num_dead

    # ------------------------------------------------------------------ constraints
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        normalize_rows_(self.W_dec)  # not .data: the in-place op must bump the version (packed.py)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Remove from W_dec.grad each row's component along that row (rows at unit norm),
        so the step moves rows on the sphere and the renormalisation changes little."""
        if self.W_dec.grad is None:
            return
        remove_parallel_grad_(self.W_dec.grad, self.W_dec.data)

    # ------------------------------------------------------------------ folding
    @torch.no_grad()
    def fold_scaling(self, scale_in: float, scale_out: float) -> None:
        """Fold a constant input scaling into the weights.

        Training saw x * scale_in and predicted y * scale_out; afterwards the dictionary maps
        raw x to raw y, decoder rows stay at unit norm and codes shrink by 1/scale_out:
        W_enc *= scale_in/scale_out, b_enc, b_dec and thresholds /= scale_out.
        """
        if scale_in <= 0 or scale_out <= 0:
            raise WorkbenchError(f"scales must be positive, got {scale_in}, {scale_out}")
        if self.has_encoder:
            self.W_enc.mul_(scale_in / scale_out)
            self.b_enc.div_(scale_out)
        self.b_dec.div_(scale_out)
        self._fold_thresholds(scale_out)

    def _fold_thresholds(self, scale_out: float) -> None:
        """Architectures with activation thresholds divide them by scale_out."""

    def extra_repr(self) -> str:
        cfg = self.cfg
        k = f", k={cfg.k}" if cfg.k is not None else ""
        tc = f", transcoder -> {cfg.d_out}" if cfg.transcoder else ""
        return f"{cfg.architecture}: d_in={cfg.d_in}, d_sae={cfg.d_sae}{k}{tc}, site={cfg.site!r}"


def mse_sum(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over tokens of ||target - x_hat||^2 (sum over dims), in fp32."""
    return (target.float() - x_hat.float()).pow(2).sum(-1).mean()


def fired_from_indices(idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> torch.Tensor:
    """[d_sae] bool: which latents have a non-zero value somewhere in vals/idx [N, k]."""
    # index_add instead of boolean indexing: no device->host sync on GPU
    counts = torch.zeros(d_sae, dtype=torch.int32, device=idx.device)
    counts.index_add_(0, idx.reshape(-1), (vals != 0).reshape(-1).to(torch.int32))
    return counts > 0


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to points [N, d].

    Robust to the few huge-norm tokens some models have, where the mean is dragged off.
    """
    guess = points.mean(0)
    for _ in range(iters):
        dist = (points - guess).norm(dim=1).clamp_min(1e-8)
        weights = 1.0 / dist
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - guess).norm() <= tol * max(1.0, float(guess.norm())):
            return new
        guess = new
    return guess
