"""Evaluations of a dictionary on held-out text, with the SAELens / SAEBench definitions.

Reconstruction (`reconstruction_metrics`; y is the site's activation, y_hat the SAE's
output, for a transcoder y is the output site; sums over the N evaluation tokens):

    mse            mean_n ||y_n - y_hat_n||^2                      (sum over dims, as SAELens)
    fvu            sum_n ||y_n - y_hat_n||^2 / sum_n ||y_n - mean(y)||^2   (about the mean)
    explained_variance  1 - fvu
    fvu_typical    the same over tokens with ||y_n|| <= 3 x median_n ||y_n|| only (a few
                   attention-sink tokens with norms ~170x the mean dominate plain FVU)
    nmse           mean_n ||y_n - y_hat_n||^2 / ||y_n||^2          (per-token normalised)
    cos            mean_n cos(y_n, y_hat_n)
    shrinkage      mean_n ||y_hat_n|| / ||y_n||                    (SAELens l2_ratio)
    relative_reconstruction_bias  sum ||y_hat||^2 / sum <y, y_hat>  (1 = unbiased)
    l0             mean_n #{i : z_ni != 0};   l1  mean_n sum_i |z_ni|
    dead_frac      share of latents never active on the N tokens
    dense_frac     share of latents active on more than 10% of the tokens
    density_histogram  counts of log10(feature density) in half-decade bins (dead in the first)

Downstream (`downstream_metrics`; the SAE output spliced into the model through the
engine's `forward_with_edits`, next-token cross-entropy in nats averaged over the
predicted positions):

    ce_clean, ce_spliced      the model as is / with y replaced by y_hat
    delta_ce                  ce_spliced - ce_clean: the headline (nats added by the SAE)
    ce_with_error_term        y replaced by y_hat + (y - y_hat): must equal ce_clean
    ce_zero_ablation, ce_mean_ablation   y replaced by 0 / by its mean over the eval tokens
    ce_loss_recovered         (ce_zero - ce_spliced) / (ce_zero - ce_clean)   (SAELens ce_loss_score)
    ce_loss_recovered_mean_ablation      the same against mean ablation
    kl, kl_with_error_term, kl_zero_ablation   mean over positions of KL(p_clean || p_edited)

Position 0 of each context (an attention sink, often with a huge norm) is excluded when
the SAE was trained without it (`exclude_position0`, the default): it is not spliced, its
activations are not counted in the reconstruction metrics, and the prediction made from
it (identical in every run) is not counted in the cross-entropies. The JSON says so in
`splice_position0`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError
from workbench.sae.base import SparseAutoencoder

DENSE_THRESHOLD = 0.1
TYPICAL_NORM_FACTOR = 3.0
HISTOGRAM_EDGES = [-10.0] + [x / 2 for x in range(-14, 1)]  # log10 density: dead, then 1e-7 ... 1


@torch.no_grad()
def reconstruction_metrics(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    batch_size: int = 2048,
    return_density: bool = False,
) -> dict[str, Any]:
    """Reconstruction and sparsity metrics of `sae` on rows x [N, d_in] (target [N, d_out])."""
    y_all = x if target is None else target
    if x.shape[0] != y_all.shape[0] or x.shape[0] == 0:
        raise WorkbenchError(f"need the same, non-zero number of input and target rows, got {x.shape[0]} and {y_all.shape[0]}")
    device = sae.W_dec.device
    norms = y_all.float().norm(dim=-1)
    cutoff = TYPICAL_NORM_FACTOR * float(norms.median())
    typical_all = norms <= cutoff
    d_out = y_all.shape[1]
    sums = {key: 0.0 for key in ("e2", "e2_typ", "y2", "y2_typ", "nmse", "cos", "ratio", "yhat2", "dot", "l0", "l1")}
    sum_y = torch.zeros(d_out, dtype=torch.float64)
    sum_y_typ = torch.zeros(d_out, dtype=torch.float64)
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n = x.shape[0]
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y_all[start:start + batch_size].to(device).double()
        typical = typical_all[start:start + batch_size].to(device)
        codes = sae.encode(xb)
        y_hat = sae.decode(codes).double()
        e2 = (yb - y_hat).pow(2).sum(-1)
        y2 = yb.pow(2).sum(-1)
        yhat2 = y_hat.pow(2).sum(-1)
        dot = (yb * y_hat).sum(-1)
        sums["e2"] += float(e2.sum())
        sums["e2_typ"] += float(e2[typical].sum())
        sums["y2"] += float(y2.sum())
        sums["y2_typ"] += float(y2[typical].sum())
        sums["nmse"] += float((e2 / y2.clamp_min(1e-12)).sum())
        sums["cos"] += float((dot / (y2.sqrt() * yhat2.sqrt()).clamp_min(1e-12)).sum())
        sums["ratio"] += float((yhat2.sqrt() / y2.sqrt().clamp_min(1e-12)).sum())
        sums["yhat2"] += float(yhat2.sum())
        sums["dot"] += float(dot.sum())
        active = codes != 0
        sums["l0"] += float(active.sum())
        sums["l1"] += float(codes.abs().sum())
        counts += active.sum(0).double().cpu()
        sum_y += yb.sum(0).cpu()
        sum_y_typ += yb[typical].sum(0).cpu()
    n_typ = int(typical_all.sum())
    var = sums["y2"] - float(sum_y.pow(2).sum()) / n
    var_typ = sums["y2_typ"] - float(sum_y_typ.pow(2).sum()) / max(n_typ, 1)
    density = counts / n
    log_density = torch.log10(density.clamp_min(1e-10))
    hist = torch.histogram(log_density.float(), bins=torch.tensor(HISTOGRAM_EDGES + [0.001]))
    out: dict[str, Any] = {
        "n_tokens": n,
        "l0": sums["l0"] / n,
        "l1": sums["l1"] / n,
        "mse": sums["e2"] / n,
        "fvu": sums["e2"] / var if var > 0 else float("nan"),
        "fvu_typical": sums["e2_typ"] / var_typ if var_typ > 0 else float("nan"),
        "nmse": sums["nmse"] / n,
        "cos": sums["cos"] / n,
        "shrinkage": sums["ratio"] / n,
        "relative_reconstruction_bias": sums["yhat2"] / sums["dot"] if sums["dot"] else float("nan"),
        "dead_frac": float((counts == 0).double().mean()),
        "dense_frac": float((density > DENSE_THRESHOLD).double().mean()),
        "n_typical": n_typ,
        "typical_norm_cutoff": cutoff,
        "max_norm_over_median": float(norms.max()) / max(float(norms.median()), 1e-12),
        "density_histogram": {
            "log10_density_bin_edges": HISTOGRAM_EDGES + [0.0],
            "counts": [int(c) for c in hist.hist.tolist()],
        },
    }
    out["explained_variance"] = 1.0 - out["fvu"]
    if return_density:
        out["feature_density"] = density
    return out


# ---------------------------------------------------------------------- downstream
def _edits(sae: SparseAutoencoder, mode: str, start: int, mean: torch.Tensor | None) -> dict:
    """Edit callables for forward_with_edits: 'sae', 'error_term', 'zero', 'mean'."""
    cfg = sae.cfg
    site_in, site_out = cfg.site, cfg.output_site
    stash: dict[str, torch.Tensor] = {}

    def stash_input(act: torch.Tensor) -> torch.Tensor:
        stash["x"] = act.clone()
        return act

    def replace(act: torch.Tensor) -> torch.Tensor:
        new = act.clone()
        if mode == "zero":
            new[:, start:] = 0
        elif mode == "mean":
            new[:, start:] = mean.to(act.device, act.dtype)
        else:
            x = stash["x"] if site_in != site_out else act
            with torch.no_grad():
                y_hat = sae(x[:, start:].to(sae.W_dec.device)).to(act.device, torch.float32)
            if mode == "error_term":
                y_hat = y_hat + (act[:, start:].float() - y_hat)
            new[:, start:] = y_hat.to(act.dtype)
        return new

    if site_in != site_out and mode in ("sae", "error_term"):
        return {site_in: stash_input, site_out: replace}
    return {site_out: replace}


@torch.no_grad()
def downstream_metrics(
    sae: SparseAutoencoder,
    model,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    splice_position0: bool | None = None,
    mean_activation: torch.Tensor | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """CE and KL with the SAE spliced in, against clean, zero- and mean-ablated runs.

    tokens: [n_ctx, T] full contexts (no padding). mean_activation [d_out]: the output
    site's mean for mean ablation (None: measured on these tokens).
    """
    from tqdm.auto import tqdm

    if not getattr(model, "has_logits", True):
        raise WorkbenchError(f"{model.name} has no language-model head; CE/KL need a causal LM")
    cfg = sae.cfg
    splice0 = (not cfg.exclude_position0) if splice_position0 is None else splice_position0
    start = 0 if splice0 else 1
    if tokens.shape[1] < start + 2:
        raise WorkbenchError("contexts are too short to measure next-token loss")
    if mean_activation is None:
        reads = []
        for i in range(0, tokens.shape[0], batch_size):
            ids = tokens[i:i + batch_size].to(model.device)
            reads.append(model.read_sites(ids, torch.ones_like(ids), [cfg.output_site])[cfg.output_site])
        mean_activation = torch.cat([r[:, start:].reshape(-1, r.shape[-1]).float() for r in reads]).mean(0)
    modes = ("sae", "error_term", "zero", "mean")
    ce = {m: 0.0 for m in ("clean", *modes)}
    kl = {m: 0.0 for m in modes}
    count = 0
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc="CE/KL", disable=not progress):
        ids = tokens[i:i + batch_size].to(model.device)
        targets = ids[:, start + 1:]
        clean = model.forward_with_edits(ids, None, {}).logits[:, start:-1].float()
        logp_clean = F.log_softmax(clean, dim=-1)
        ce["clean"] += float(-logp_clean.gather(-1, targets[..., None]).sum())
        p_clean = logp_clean.exp()
        for mode in modes:
            logits = model.forward_with_edits(ids, None, _edits(sae, mode, start, mean_activation)).logits
            logp = F.log_softmax(logits[:, start:-1].float(), dim=-1)
            ce[mode] += float(-logp.gather(-1, targets[..., None]).sum())
            kl[mode] += float((p_clean * (logp_clean - logp)).sum())
        count += targets.numel()
    ce = {m: v / count for m, v in ce.items()}
    kl = {m: v / count for m, v in kl.items()}

    def recovered(ablated: float) -> float:
        gap = ablated - ce["clean"]
        return (ablated - ce["sae"]) / gap if abs(gap) > 1e-12 else float("nan")

    return {
        "ce_clean": ce["clean"],
        "ce_spliced": ce["sae"],
        "delta_ce": ce["sae"] - ce["clean"],
        "ce_with_error_term": ce["error_term"],
        "ce_zero_ablation": ce["zero"],
        "ce_mean_ablation": ce["mean"],
        "ce_loss_recovered": recovered(ce["zero"]),
        "ce_loss_recovered_mean_ablation": recovered(ce["mean"]),
        "kl": kl["sae"],
        "kl_with_error_term": kl["error_term"],
        "kl_zero_ablation": kl["zero"],
        "kl_mean_ablation": kl["mean"],
        "n_ce_tokens": count,
        "splice_position0": splice0,
    }


# ---------------------------------------------------------------------- end to end
def evaluate_sae(
    sae: SparseAutoencoder,
    model,
    corpus: Any = "default",
    n_tokens: int = 4096,
    *,
    split: str = "test",
    context_size: int = 128,
    batch_size: int = 8,
    ce_tokens: int | None = None,
    compute_ce: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Every metric above for `sae` on `n_tokens` held-out tokens of `corpus`.

    corpus: a corpus name/path, a workbench Corpus, or a PackedCorpus. The reconstruction
    metrics use n_tokens tokens (position 0 of each context excluded when the SAE was
    trained so); CE/KL use the contexts holding the first `ce_tokens` of them (default: all).
    """
    from workbench.corpora import load_corpus, pack_corpus

    cfg = sae.cfg
    if n_tokens < 1:
        raise WorkbenchError(f"n_tokens must be >= 1, got {n_tokens}")
    model.check_site(cfg.site)
    if model.site_width(cfg.site) != cfg.d_in:
        raise WorkbenchError(f"d_in mismatch: the SAE expects {cfg.d_in}, {cfg.site} has width {model.site_width(cfg.site)}")
    rows_per_ctx = context_size - (1 if cfg.exclude_position0 else 0)
    n_ctx = math.ceil(n_tokens / rows_per_ctx)
    if hasattr(corpus, "tokens") and hasattr(corpus, "context_size"):
        packed = corpus
        context_size = packed.context_size
    else:
        corpus_obj = load_corpus(corpus) if isinstance(corpus, str) else corpus
        packed = pack_corpus(corpus_obj, model.tokenizer, context_size, split=split, max_tokens=n_ctx * context_size)
    tokens = packed.tokens[:n_ctx]
    if tokens.shape[0] == 0:
        raise WorkbenchError(f"the {split} split of the corpus has no full context of {context_size} tokens")
    sites = [cfg.site] if cfg.output_site == cfg.site else [cfg.site, cfg.output_site]
    cap = model.capture(packed, sites, batch_size=batch_size, max_tokens=n_tokens, drop_bos=cfg.exclude_position0,
                        progress=progress)
    x = cap.acts[cfg.site]
    y = cap.acts[cfg.output_site]
    result: dict[str, Any] = {
        "model": model.name,
        "site": cfg.site,
        "site_out": cfg.output_site,
        "architecture": cfg.architecture,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "corpus": getattr(packed, "corpus", str(corpus)),
        "split": getattr(packed, "split", split),
        "context_size": context_size,
        "exclude_position0": cfg.exclude_position0,
    }
    result.update(reconstruction_metrics(sae, x, None if y is x else y))
    if compute_ce:
        if ce_tokens is not None:
            tokens = tokens[: max(1, math.ceil(ce_tokens / rows_per_ctx))]
        start = 1 if cfg.exclude_position0 else 0
        mean = y.float().mean(0)  # the rows already exclude position 0 when it is not spliced
        result.update(downstream_metrics(sae, model, tokens, batch_size=batch_size, mean_activation=mean,
                                         splice_position0=start == 0, progress=progress))
    return result
