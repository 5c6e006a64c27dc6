"""Harvest: run SAEs over corpus activations and record what each latent responds to.

    from workbench.features import HarvestConfig, harvest
    summary = harvest(model, sae, "feats.sqlite", HarvestConfig(n_tokens=200_000), sae_name="batchtopk-l15-8k")

One forward per batch of contexts reads the SAEs' input sites (stopping at the last of
them), each SAE encodes its site, and a `FeatureAccumulator` per SAE folds the codes in
(accumulate.py). Several SAEs of one model share the forwards (`harvest_many`). The state
is checkpointed (atomically) every `checkpoint_seconds` into `<STORE>.harvest/state.pt`, so
an interrupted harvest rerun with the same settings continues where it stopped; at the end
the derived tables are computed (finalize.py) and the store is written atomically
(writer.py), steering scores found in `<STORE stem>.scores.safetensors` are copied in, and
the checkpoint is removed.

Works for every SAE architecture (dense `encode`), signed AbsTopK codes (most negative
contexts and a negative histogram too) and transcoders (they read `cfg.site`; their logit
effects come from the decoder, which writes into `cfg.site_out`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from workbench.errors import WorkbenchError
from workbench.features.accumulate import AccumulatorSpec, FeatureAccumulator

log = logging.getLogger("workbench.features")

SIGNED_ARCHITECTURES = frozenset({"abstopk"})
"""Architectures whose codes can be negative."""

STATE_VERSION = 1


@dataclass(frozen=True)
class HarvestConfig:
    """What to run the SAE over and how much to keep per latent."""

    corpus: str = "default"
    """Corpus name (workbench.corpora) or a local file."""
    split: str = "test"
    """Corpus split: "test" (held out from SAE training), "train" or "all"."""
    n_tokens: int = 200_000
    """Tokens to harvest (rounded up to whole contexts; fewer if the split is shorter)."""
    context_size: int = 128
    """Tokens per context."""
    batch_size: int = 16
    """Contexts per forward pass."""
    n_top: int = 12
    """Top activating contexts kept per latent (and most negative ones for signed codes)."""
    n_quantile: int = 12
    """Contexts sampled across activation quantile intervals per latent."""
    n_intervals: int = 4
    """Quantile intervals the samples are spread over (n_quantile / n_intervals per interval)."""
    reservoir_size: int = 40
    """Random activating contexts kept per latent, from which the quantile samples are drawn."""
    window_before: int = 17
    """Tokens shown before an example's peak."""
    window_after: int = 6
    """Tokens shown after it."""
    hist_bins: int = 48
    """Log-spaced bins of the activation histogram."""
    n_logits: int = 10
    """Top and bottom logit effects kept per latent."""
    n_neighbours: int = 10
    """Nearest decoder directions and co-firing latents kept per latent."""
    n_token_features: int = 12
    """Latents kept per token id for "features by token"."""
    min_token_count: int = 2
    """Token ids seen fewer times than this get no features-by-token entry."""
    umap: bool = True
    """Compute 2-D UMAP coordinates of the decoder rows (umap-learn; ~15 s numba compile once)."""
    umap_neighbors: int = 15
    """UMAP n_neighbors."""
    skip_position0: bool = True
    """Ignore position 0 of every context (the attention sink; SAEs are trained without it)."""
    seed: int = 0
    """Seed of the reservoir sampling and of UMAP."""
    checkpoint_seconds: float = 120.0
    """Save the resumable state at most this often (and when stopped early)."""

    def __post_init__(self) -> None:
        positive = ("n_tokens", "context_size", "batch_size", "n_top", "n_intervals", "reservoir_size",
                    "hist_bins", "n_logits", "n_neighbours", "n_token_features", "min_token_count", "umap_neighbors")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WorkbenchError(f"HarvestConfig.{name} must be a positive integer, got {value!r}")
        for name in ("n_quantile", "window_before", "window_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise WorkbenchError(f"HarvestConfig.{name} must be an integer >= 0, got {value!r}")
        if self.split not in ("train", "test", "all"):
            raise WorkbenchError(f"HarvestConfig.split must be train, test or all; got {self.split!r}")
        if self.context_size < 2 and self.skip_position0:
            raise WorkbenchError("context_size must be >= 2 when position 0 is skipped")
        if self.n_quantile % self.n_intervals:
            raise WorkbenchError(f"n_quantile ({self.n_quantile}) must be a multiple of n_intervals ({self.n_intervals})")
        if self.reservoir_size < self.n_quantile:
            raise WorkbenchError(f"reservoir_size ({self.reservoir_size}) must be >= n_quantile ({self.n_quantile})")
        if self.window_before + 1 + self.window_after > 255:
            raise WorkbenchError("an example window holds at most 255 tokens")
        if self.checkpoint_seconds <= 0:
            raise WorkbenchError(f"checkpoint_seconds must be > 0, got {self.checkpoint_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of the settings that change the result (checkpointing cadence excluded)."""
        values = {k: v for k, v in self.to_dict().items() if k != "checkpoint_seconds"}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class HarvestTarget:
    """One SAE to harvest and where its store goes."""

    sae: Any
    """A loaded SparseAutoencoder (workbench.sae.load_sae)."""
    out: Path
    """The store file to write."""
    name: str = ""
    """The SAE's name in feature ids (default: the store file's stem)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.name = self.name or self.out.stem


@dataclass
class HarvestSummary:
    """What a harvest call did."""

    out: Path
    complete: bool
    """False when stopped early (`stop_after_batches`); rerun to continue."""
    batches_done: int
    n_batches: int
    n_tokens: int
    """Tokens counted so far (position 0 excluded when skipped)."""
    seconds: float
    resumed_from: int = 0
    """Batches already done when this call started."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Store-level figures (dead fraction, size ...) once complete."""


def sae_probe(sae) -> list[float]:
    """A small, dtype-robust signature of an SAE's decoder (for 'store built for another SAE' checks)."""
    W = sae.W_dec.detach().float().cpu()
    rows = torch.linspace(0, W.shape[0] - 1, min(8, W.shape[0])).long()
    cols = torch.linspace(0, W.shape[1] - 1, min(8, W.shape[1])).long()
    return [round(float(v), 4) for v in W[rows][:, cols].reshape(-1)]


def scores_sidecar(out: Path) -> Path:
    """`<store>.scores.safetensors`: steering scores computed before (or without) a store."""
    return out.with_name(out.stem + ".scores.safetensors")


def import_sidecar_scores(out: Path, d_sae: int) -> list[str]:
    """Copy input/output scores from the store's sidecar file into a freshly written store.

    The steering tools write scores there too (workbench.steering.scores_store), so
    rebuilding a store keeps them. A damaged sidecar is reported and skipped.
    """
    from workbench.features.schema import SCORE_COLUMNS
    from workbench.features.store import FeatureStore

    sidecar = scores_sidecar(Path(out))
    if not sidecar.is_file():
        return []
    try:
        from safetensors import safe_open

        with safe_open(str(sidecar), framework="pt") as handle:
            scores = {name: handle.get_tensor(name) for name in handle.keys() if name in SCORE_COLUMNS}
    except Exception as error:  # a damaged sidecar must not lose the harvest
        log.warning("could not read the scores in %s (%s); the store has none", sidecar, error)
        return []
    imported = []
    store = FeatureStore(out)
    try:
        for name, values in scores.items():
            if values.numel() == d_sae:
                store.set_scores(name, values.float().numpy())
                imported.append(name)
    finally:
        store.close()
    return imported


def state_dir(out: Path) -> Path:
    """Where an unfinished harvest of `out` keeps its resumable state."""
    return out.with_name(out.name + ".harvest")


def check_target(model, sae) -> None:
    """The SAE must read a site of this model with the right width."""
    site = sae.cfg.site
    if not site:
        raise WorkbenchError("the SAE does not record its site; load it with site=... (workbench.sae.load_sae)")
    model.check_site(site)
    width = model.site_width(site)
    if width != sae.cfg.d_in:
        raise WorkbenchError(f"the SAE reads width {sae.cfg.d_in} but {site} of {model.name} has width {width}; "
                             "check the model and the site")


def harvest(model, sae, out: str | Path, config: HarvestConfig | None = None, *, sae_name: str = "",
            progress: bool = False, overwrite: bool = False, stop_after_batches: int | None = None,
            command: str = "") -> HarvestSummary:
    """Harvest one SAE into the store `out` (see the module docstring); returns a summary."""
    target = HarvestTarget(sae=sae, out=Path(out), name=sae_name)
    return harvest_many(model, [target], config, progress=progress, overwrite=overwrite,
                        stop_after_batches=stop_after_batches, command=command)[0]


def harvest_many(model, targets: Sequence[HarvestTarget], config: HarvestConfig | None = None, *,
                 progress: bool = False, overwrite: bool = False, stop_after_batches: int | None = None,
                 command: str = "") -> list[HarvestSummary]:
    """Harvest several SAEs of one model, sharing one forward per batch.

    Resumes from `<out>.harvest/` when every target has a checkpoint with the same settings
    and batch count. `stop_after_batches` stops this call (checkpointed) after that many new
    batches, for time-sliced runs; the summaries then have complete=False.
    """
    from tqdm.auto import tqdm

    from workbench.corpora import load_corpus, pack_corpus

    config = config or HarvestConfig()
    if not targets:
        raise WorkbenchError("no SAEs to harvest")
    outs = [t.out for t in targets]
    if len(set(outs)) != len(outs):
        raise WorkbenchError("two SAEs would write the same store; give each its own --out")
    for target in targets:
        check_target(model, target.sae)
        if target.out.exists() and not overwrite and not state_dir(target.out).exists():
            raise WorkbenchError(f"{target.out} already exists; pass overwrite=True (--overwrite) to rebuild it")
    packed = pack_corpus(load_corpus(config.corpus), model.tokenizer, config.context_size, split=config.split,
                         max_tokens=config.n_tokens)
    n_batches = math.ceil(len(packed) / config.batch_size)
    accumulators = [FeatureAccumulator(_spec(t.sae, config)) for t in targets]
    identity = [_identity(model, t, config, len(packed)) for t in targets]
    start = _resume(targets, accumulators, identity)
    started = time.time()
    last_save = started
    sites = model.ordered({t.sae.cfg.site for t in targets})
    bar = tqdm(total=n_batches, initial=start, unit="batch", desc=f"harvest {', '.join(t.name for t in targets)}",
               disable=not progress)
    done = start  # batches fully folded into every accumulator
    updating = False
    try:
        for batch_index in range(start, n_batches):
            if stop_after_batches is not None and batch_index - start >= stop_after_batches:
                break
            rows = torch.arange(batch_index * config.batch_size, min((batch_index + 1) * config.batch_size, len(packed)))
            ids = packed.tokens[rows]
            reads = model.read_sites(ids, torch.ones_like(ids), sites)
            counted = torch.ones(ids.shape, dtype=torch.bool)
            if config.skip_position0:
                counted[:, 0] = False
            codes = [_encode(t.sae, reads[t.sae.cfg.site], counted) for t in targets]
            updating = True
            for acc, batch_codes in zip(accumulators, codes):
                acc.update(batch_codes, ids, counted, rows, batch_index)
            updating = False
            done = batch_index + 1
            bar.update(1)
            if time.time() - last_save > config.checkpoint_seconds and done < n_batches:
                _save(targets, accumulators, identity, done)
                last_save = time.time()
    except KeyboardInterrupt:
        # An interrupt inside an update leaves the accumulators half-updated: keep the last checkpoint then.
        if not updating and done > start:
            _save(targets, accumulators, identity, done)
        raise
    finally:
        bar.close()
    if done < n_batches:
        _save(targets, accumulators, identity, done)
        return [HarvestSummary(out=t.out, complete=False, batches_done=done, n_batches=n_batches, n_tokens=a.n_tokens,
                               seconds=time.time() - started, resumed_from=start)
                for t, a in zip(targets, accumulators)]

    from workbench.features.finalize import finalize
    from workbench.features.writer import write_store

    summaries = []
    for target, acc, ident in zip(targets, accumulators, identity):
        content = finalize(acc, model, target.sae, packed, config, progress=progress)
        meta = dict(ident, n_tokens=acc.n_tokens, command=command,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        stats = write_store(target.out, content, meta)
        stats["scores_imported"] = import_sidecar_scores(target.out, target.sae.cfg.d_sae)
        shutil.rmtree(state_dir(target.out), ignore_errors=True)
        summaries.append(HarvestSummary(out=target.out, complete=True, batches_done=n_batches, n_batches=n_batches,
                                        n_tokens=acc.n_tokens, seconds=time.time() - started, resumed_from=start,
                                        stats=stats))
    return summaries


# ---------------------------------------------------------------------------- helpers
def _spec(sae, config: HarvestConfig) -> AccumulatorSpec:
    return AccumulatorSpec(
        d_sae=sae.cfg.d_sae, signed=sae.cfg.architecture in SIGNED_ARCHITECTURES, n_top=config.n_top,
        reservoir_size=config.reservoir_size, window_before=config.window_before,
        window_after=config.window_after, hist_bins=config.hist_bins, seed=config.seed,
    )


@torch.no_grad()
def _encode(sae, x: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Dense codes [B, T, F] float32 on CPU, zeroed where a token does not count."""
    param = sae.W_dec
    codes = sae.encode(x.to(param.device, param.dtype)).float().cpu()
    return codes * counted[:, :, None]


def _identity(model, target: HarvestTarget, config: HarvestConfig, n_contexts: int) -> dict[str, Any]:
    """The store's meta that ties it to a model, an SAE and the settings (also the resume key)."""
    from workbench import __version__
    from workbench.features.finalize import token_feature_dtype

    cfg = target.sae.cfg
    return {
        "model": model.name, "site": cfg.site, "site_out": cfg.output_site, "sae_name": target.name,
        "architecture": cfg.architecture, "d_sae": cfg.d_sae, "d_in": cfg.d_in, "d_out": cfg.d_out, "k": cfg.k,
        "transcoder": bool(cfg.transcoder), "signed": cfg.architecture in SIGNED_ARCHITECTURES,
        "sae_probe": sae_probe(target.sae), "corpus": config.corpus, "split": config.split,
        "n_contexts": n_contexts, "context_size": config.context_size, "window_before": config.window_before,
        "window_after": config.window_after, "config": config.to_dict(), "config_fingerprint": config.fingerprint(),
        "workbench_version": __version__, "token_feature_dtype": token_feature_dtype(cfg.d_sae),
    }


def _resume(targets, accumulators, identity) -> int:
    """Load every target's checkpoint when all exist and agree; returns the batch to start at."""
    loaded = []
    for target, ident in zip(targets, identity):
        path = state_dir(target.out) / "state.pt"
        if not path.exists():
            loaded.append(None)
            continue
        state = torch.load(path, weights_only=True)
        if state.get("version") != STATE_VERSION or json.loads(state["identity"]) != _resume_key(ident):
            raise WorkbenchError(
                f"{state_dir(target.out)} holds an unfinished harvest with other settings (model, SAE, corpus or "
                "flags); rerun with the same settings to continue it, or delete that folder to start over"
            )
        loaded.append(state)
    if all(s is None for s in loaded):
        return 0
    counts = {int(s["batches_done"]) for s in loaded if s is not None}
    if None in loaded or len(counts) != 1:
        raise WorkbenchError("only some of the SAEs have a resumable state (or at different points); delete "
                             + ", ".join(str(state_dir(t.out)) for t in targets) + " to start over")
    for acc, state in zip(accumulators, loaded):
        acc.load_state_dict(state["accumulator"])
    return counts.pop()


def _resume_key(ident: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ident.items() if k not in ("workbench_version",)}


def _save(targets, accumulators, identity, batches_done: int) -> None:
    from workbench.atomic import atomic_path

    for target, acc, ident in zip(targets, accumulators, identity):
        folder = state_dir(target.out)
        folder.mkdir(parents=True, exist_ok=True)
        state = {"version": STATE_VERSION, "batches_done": batches_done,
                 "identity": json.dumps(_resume_key(ident)), "accumulator": acc.state_dict()}
        with atomic_path(folder / "state.pt") as tmp:
            torch.save(state, tmp)
