"""End-to-end (KL) fine-tuning of a trained SAE with the model's own next-token loss.

A reconstruction-trained SAE spends its error evenly; the model does not care evenly. A short
phase that trains the SAE spliced into the model, on

    loss = KL(p_clean || p_spliced) + mse_coef * FVU(batch)

(the e2e-SAE objective of Braun et al. 2024, used as a cheap fine-tune after MSE training as
in Karvonen et al. 2025), moves the SAE's error to directions the later layers ignore: the CE
increase falls a lot while FVU rises a little. The FVU term keeps the dictionary a
reconstruction of the activation (features stay readable, the splice stays in distribution).

The splice is a plain PyTorch forward hook on the site's module (not an nnsight trace):
gradients must flow from the logits back through the later layers into the SAE, every step,
and a hook is the cheapest way to do that. The model's own weights stay frozen.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError
from workbench.sae.base import SparseAutoencoder


@dataclass
class FinetuneConfig:
    """Settings of a KL fine-tune.

    steps: optimiser steps; batch_contexts: contexts per step; lr: Adam step size (peak,
    linear warm-up over the first 5% and decay over the last 30%); mse_coef: weight of the
    batch FVU beside the KL; seed: context sampling order.
    """

    steps: int = 300
    batch_contexts: int = 32
    lr: float = 5e-5
    mse_coef: float = 1.0
    seed: int = 0
    calibration_contexts: int = 256
    """SAEs with an inference threshold (BatchTopK) get it re-set at the end on the
    activations of the first this-many contexts of `tokens` (see kl_finetune)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_contexts < 1:
            raise WorkbenchError(f"steps and batch_contexts must be >= 1, got {self.steps}, {self.batch_contexts}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise WorkbenchError(f"lr must be a positive number, got {self.lr}")
        if self.mse_coef < 0:
            raise WorkbenchError(f"mse_coef must be >= 0, got {self.mse_coef}")

    def lr_multiplier(self, step: int) -> float:
        warm = max(1, self.steps // 20)
        decay_from = int(self.steps * 0.7)
        if step < warm:
            return (step + 1) / warm
        if step >= decay_from:
            return max(0.0, (self.steps - step) / max(1, self.steps - decay_from))
        return 1.0


@dataclass
class FinetuneResult:
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    threshold: tuple[float, float] | None = None
    """(before, after) the re-set of a BatchTopK SAE's inference threshold; None for others."""


@contextlib.contextmanager
def spliced_site(model, site: str, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the activation at `site` by edit(activation) in every forward, differentiably.

    edit receives [B, T, d] and returns the same shape. Attention-pattern sites are refused.
    """
    from workbench import sites as site_grammar

    if site_grammar.parse_site(site).is_pattern:
        raise WorkbenchError(f"cannot splice an SAE into attention probabilities ({site})")
    location = model._location(site)
    module = model.hf.get_submodule(location.module)

    def swap(value):
        if isinstance(value, tuple):
            index = location.index or 0
            return value[:index] + (edit(value[index]),) + value[index + 1:]
        return edit(value)

    if location.port == "output":
        handle = module.register_forward_hook(lambda _m, _args, out: swap(out))
    else:
        handle = module.register_forward_pre_hook(lambda _m, args: (swap(args[0]), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def kl_finetune(
    sae: SparseAutoencoder,
    model,
    tokens: torch.Tensor,
    cfg: FinetuneConfig | None = None,
    *,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune `sae` in place on KL(clean || spliced) + mse_coef * FVU.

    tokens: [n_ctx, T] full contexts of token ids (no padding). Position 0 is neither spliced
    nor scored when the SAE was trained without it (cfg.exclude_position0). Only SAEs that
    read and write the same site (not transcoders) are supported. Returns the per-step history
    (loss, kl, fvu). The decoder rows are kept at unit norm, as in training.
    """
    from tqdm.auto import tqdm

    cfg = cfg or FinetuneConfig()
    scfg = sae.cfg
    if scfg.output_site != scfg.site:
        raise WorkbenchError("KL fine-tuning splices a reconstruction; a transcoder (site != output_site) is not supported")
    if not getattr(model, "is_causal", False):
        raise WorkbenchError(f"{model.name} is not a causal language model; KL fine-tuning needs next-token logits")
    if tokens.dim() != 2 or tokens.shape[0] < 1:
        raise WorkbenchError(f"tokens must be [n_contexts, T] with at least one context, got {tuple(tokens.shape)}")
    start = 1 if scfg.exclude_position0 else 0
    device = sae.W_dec.device
    params = [p for p in sae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(tokens.shape[0], generator=generator)
    stats: dict[str, torch.Tensor] = {}

    def edit(act: torch.Tensor) -> torch.Tensor:
        x = act[:, start:].to(device, sae.W_dec.dtype)
        x_hat = sae(x)
        flat_x, flat_hat = x.reshape(-1, x.shape[-1]).float(), x_hat.reshape(-1, x.shape[-1]).float()
        variance = (flat_x - flat_x.mean(0)).pow(2).sum().clamp_min(1e-12)
        stats["fvu"] = (flat_x - flat_hat).pow(2).sum() / variance
        return torch.cat([act[:, :start], x_hat.to(act.device, act.dtype)], dim=1)

    frozen = [p for p in model.hf.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    result = FinetuneResult(steps=cfg.steps)
    sae.train()
    cursor = 0
    try:
        with model.lock:
            bar = tqdm(range(cfg.steps), desc="KL fine-tune", disable=not progress)
            for step in bar:
                if cursor + cfg.batch_contexts > order.numel():
                    order, cursor = torch.randperm(tokens.shape[0], generator=generator), 0
                ids = tokens[order[cursor:cursor + cfg.batch_contexts]].to(model.device)
                cursor += cfg.batch_contexts
                with torch.no_grad():
                    clean = model.hf(input_ids=ids).logits[:, start:-1].float()
                    logp_clean = F.log_softmax(clean, dim=-1)
                with spliced_site(model, scfg.site, edit):
                    logits = model.hf(input_ids=ids).logits[:, start:-1].float()
                logp = F.log_softmax(logits, dim=-1)
                kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1).mean()
                loss = kl + cfg.mse_coef * stats["fvu"]
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * cfg.lr_multiplier(step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if not torch.isfinite(loss):
                    raise WorkbenchError(f"KL fine-tuning diverged at step {step} (loss {float(loss)}); lower lr")
                sae.remove_parallel_grad()
                optimizer.step()
                sae.normalize_decoder()
                row = {"step": step, "loss": float(loss.detach()), "kl": float(kl.detach()),
                       "fvu": float(stats["fvu"].detach())}
                result.history.append(row)
                bar.set_postfix(kl=f"{row['kl']:.4f}", fvu=f"{row['fvu']:.4f}")
    finally:
        for p in frozen:
            p.requires_grad_(True)
        sae.eval()
    if hasattr(sae, "calibrate_threshold"):
        result.threshold = _recalibrate_threshold(sae, model, tokens, cfg.calibration_contexts, start)
    return result


@torch.no_grad()
def _recalibrate_threshold(sae, model, tokens: torch.Tensor, n_contexts: int, start: int) -> tuple[float, float]:
    """A BatchTopK SAE trains with the batch rule and infers with one threshold; the fine-tune
    moved its weights, so the threshold set after MSE training no longer keeps k latents per
    token on average. Re-set it on these contexts' activations (positions from `start`)."""
    ids = tokens[:max(1, n_contexts)].to(model.device)
    acts = model.read_sites(ids, torch.ones_like(ids), [sae.cfg.site])[sae.cfg.site][:, start:]
    before = float(sae.threshold)
    after = sae.calibrate_threshold(acts.reshape(-1, sae.cfg.d_in).to(sae.W_dec.device).float())
    return before, after


def finetune_summary(result: FinetuneResult, window: int = 20) -> dict[str, Any]:
    """First and last `window`-step means of the history (for eval.json / logs)."""
    h = result.history
    if not h:
        return {"steps": 0}

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    first, last = h[:window], h[-window:]
    return {"steps": len(h), "kl_first": mean(first, "kl"), "kl_last": mean(last, "kl"),
            "fvu_first": mean(first, "fvu"), "fvu_last": mean(last, "fvu")}
