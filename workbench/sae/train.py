"""The trainer: one activation stream, one or many dictionaries (a sweep), resumable.

    result = train_saes([SaeConfig("topk", 576, 8192, k=32, site=S)], TrainConfig(total_tokens=...),
                        source, out_dir="runs/topk")

Each step draws one batch {site: [B, width]} from the source and steps every dictionary
on its own site(s), so a sweep over architectures, k or widths (or several layers) costs
one pass of activations. Per dictionary and step:

1. inputs scaled by a constant so that E||x|| = sqrt(d_in) (estimated once on
   `init_tokens` rows; folded into the weights on save, see base.fold_scaling);
2. loss from the architecture's `training_step` (bf16 autocast on CUDA), with
   dead latents (not fired for `dead_window_tokens` tokens) handed to AuxK;
3. backward, gradients averaged across ranks (torchrun), the decoder gradient's part
   parallel to each row removed, optional clipping, Adam, decoder rows renormalised;
4. Adam's learning rate: linear warm-up, constant, then linear decay over the last
   (1 - lr_decay_start) of the steps; L1/L0 coefficients ramp up over
   `sparsity_warmup_steps`.

Checkpoints (every `checkpoint_every` steps, and at the end) hold everything needed to
continue bit-for-bit: weights, buffers, Adam moments, dead counters, scales, history;
the source regenerates the same batches from (seed, step). Non-finite activations or
losses stop training with the step number, after a checkpoint of the last good state.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from workbench.atomic import write_json
from workbench.errors import WorkbenchError
from workbench.sae import distributed as dd
from workbench.sae.base import SparseAutoencoder
from workbench.sae.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from workbench.sae.config import SaeConfig
from workbench.sae.io import save_sae
from workbench.sae.registry import create_sae
from workbench.sae.sources import ActivationSource


@dataclass(frozen=True)
class TrainConfig:
    """How to train (shared by every dictionary of a sweep)."""

    total_tokens: int
    """Training tokens (rows) per dictionary; steps = total_tokens // batch_size."""

    batch_size: int = 4096
    """Rows per step (the global batch when data-parallel)."""

    lr: float | None = None
    """Adam learning rate; None: 2e-4 / sqrt(d_sae / 2^14) per dictionary (Gao et al.)."""

    lr_warmup_steps: int | None = None
    """Linear warm-up steps; None: 5% of the steps, at most 1000."""

    lr_decay_start: float = 0.8
    """Fraction of the steps after which the rate decays linearly to final_lr_fraction * lr."""

    final_lr_fraction: float = 0.0
    """The rate at the last step, as a fraction of lr."""

    adam_beta1: float = 0.9
    """Adam's first-moment decay."""

    adam_beta2: float = 0.999
    """Adam's second-moment decay."""

    adam_eps: float = 1e-8
    """Adam's epsilon."""

    grad_clip_norm: float | None = None
    """Clip each dictionary's gradient norm to this (None: no clipping)."""

    sparsity_warmup_steps: int | None = None
    """Ramp of the L1 (relu) / L0 (jumprelu) coefficient from 0; None: 5% of the steps."""

    normalize_activations: bool = True
    """Scale inputs (and targets) so their mean norm is sqrt(width); folded in on save."""

    init_tokens: int = 16384
    """Rows used to estimate the scales and initialise b_dec."""

    dead_window_tokens: int | None = None
    """A latent not active for this many tokens is dead (AuxK target, reported);
    None: min(10M, max(batch_size, total_tokens // 5))."""

    checkpoint_every: int = 0
    """Steps between checkpoints (0: only at the end); needs an output folder."""

    log_every: int = 25
    """Steps between history rows (and progress-bar updates)."""

    seed: int = 0
    """Seeds the initial weights and the order of the batches."""

    device: str = "cpu"
    """Where the dictionaries train ("cpu", "cuda", "cuda:1")."""

    autocast: bool | None = None
    """bf16 autocast for the forward; None: on for CUDA, off elsewhere."""

    save_dtype: str = "float32"
    """dtype of the saved dictionaries ("float16" / "bfloat16" for shipped files)."""

    progress: bool = True
    """Show a tqdm bar with live loss, L0, FVU and dead fraction."""

    def __post_init__(self) -> None:
        if self.total_tokens < 1 or self.batch_size < 1:
            raise WorkbenchError(f"total_tokens and batch_size must be >= 1, got {self.total_tokens}, {self.batch_size}")
        if self.total_tokens < self.batch_size:
            raise WorkbenchError(
                f"total_tokens={self.total_tokens} is less than one batch of {self.batch_size}; "
                "train on more tokens or use a smaller --batch-size"
            )
        if self.lr is not None and not self.lr > 0:
            raise WorkbenchError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.lr_decay_start <= 1.0 or not 0.0 <= self.final_lr_fraction <= 1.0:
            raise WorkbenchError("lr_decay_start and final_lr_fraction must be in [0, 1]")
        if self.checkpoint_every < 0 or self.log_every < 1 or self.init_tokens < 1:
            raise WorkbenchError("checkpoint_every must be >= 0, log_every and init_tokens >= 1")

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    @property
    def warmup_steps(self) -> int:
        if self.lr_warmup_steps is not None:
            return max(0, self.lr_warmup_steps)
        return min(1000, max(1, self.total_steps // 20))

    @property
    def sparsity_warmup(self) -> int:
        if self.sparsity_warmup_steps is not None:
            return max(0, self.sparsity_warmup_steps)
        return max(1, self.total_steps // 20)

    @property
    def dead_window(self) -> int:
        if self.dead_window_tokens is not None:
            return self.dead_window_tokens
        return min(10_000_000, max(self.batch_size, self.total_tokens // 5))

    def lr_multiplier(self, step: int) -> float:
        """Warm-up x decay factor for step (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decay_from = self.lr_decay_start * self.total_steps
        if step < decay_from or self.total_steps <= decay_from:
            decay = 1.0
        else:
            frac = (step - decay_from) / max(1.0, self.total_steps - decay_from)
            decay = 1.0 - (1.0 - self.final_lr_fraction) * min(1.0, frac)
        return warm * decay

    def resumable_fields(self) -> dict[str, Any]:
        """Fields a resumed run must share with the original (display and cadence may change)."""
        skip = {"progress", "checkpoint_every", "log_every", "save_dtype"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


class NonFiniteError(WorkbenchError):
    """Training met NaN/inf; carries the step and the last good checkpoint (if any)."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def default_lr(d_sae: int) -> float:
    """Gao et al.'s learning-rate scaling: 2e-4 / sqrt(d_sae / 2^14)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


@dataclass
class _Run:
    name: str
    sae: SparseAutoencoder
    optimizer: torch.optim.Optimizer
    base_lr: float
    scale_in: float = 1.0
    scale_out: float = 1.0
    since_fired: torch.Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What `train_saes` returns: folded dictionaries (eval mode) and their curves."""

    saes: dict[str, SparseAutoencoder]
    history: dict[str, list[dict[str, float]]]
    out_dirs: dict[str, Path]
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    stopped_early: bool = False
    """True when `time_limit_s` ended training before total_steps (the schedule was not finished)."""


def run_names(configs: Sequence[SaeConfig]) -> list[str]:
    """Folder names for a sweep: one SAE -> '' (the output folder itself); else descriptive."""
    if len(configs) == 1:
        return [""]
    names = []
    for i, cfg in enumerate(configs):
        site = cfg.site.replace("blocks.", "L").replace(".hook_", "_").replace(".", "_") or "site"
        k = f"_k{cfg.k}" if cfg.k is not None else ""
        names.append(f"{i:02d}_{cfg.architecture}_{site}_{cfg.d_sae}{k}")
    return names


class Trainer:
    """Trains the dictionaries of `configs` on one activation stream (see the module docstring)."""

    def __init__(self, configs: Sequence[SaeConfig], train_cfg: TrainConfig, *, out_dir: str | Path | None = None,
                 names: Sequence[str] | None = None):
        if not configs:
            raise WorkbenchError("nothing to train: give at least one SaeConfig")
        self.configs = [cfg.replace(dtype="float32") for cfg in configs]
        self.train_cfg = train_cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.names = list(names) if names is not None else run_names(self.configs)
        if len(set(self.names)) != len(self.names):
            raise WorkbenchError(f"dictionary names must be unique, got {self.names}")
        if train_cfg.checkpoint_every and self.out_dir is None:
            raise WorkbenchError("checkpoint_every needs an output folder (out_dir)")
        self.device = torch.device(train_cfg.device)
        self.world = dd.world_size()
        if train_cfg.batch_size % self.world:
            raise WorkbenchError(f"batch_size {train_cfg.batch_size} must be divisible by the {self.world} ranks")
        self.runs: list[_Run] = []
        self.step = 0

    # ------------------------------------------------------------------ setup
    def _check_source(self, source: ActivationSource) -> None:
        for cfg in self.configs:
            if not cfg.site:
                raise WorkbenchError("every SaeConfig needs a site to read from the activation source")
            source.check_sites([cfg.site] + ([cfg.site_out] if cfg.transcoder else []))
            if source.width(cfg.site) != cfg.d_in:
                raise WorkbenchError(
                    f"d_in mismatch: the SAE expects {cfg.d_in} but {cfg.site} has width {source.width(cfg.site)}"
                )
            if cfg.transcoder and source.width(cfg.site_out) != cfg.d_out:
                raise WorkbenchError(
                    f"d_out mismatch: the transcoder predicts {cfg.d_out} but {cfg.site_out} has width "
                    f"{source.width(cfg.site_out)}"
                )

    def _fill_provenance(self, source: ActivationSource) -> None:
        desc = source.description or {}
        filled = []
        for cfg in self.configs:
            changes = {}
            for key in ("model_name", "dataset"):
                if not getattr(cfg, key) and desc.get(key):
                    changes[key] = str(desc[key])
            if cfg.context_size is None and desc.get("context_size"):
                changes["context_size"] = int(desc["context_size"])
            if "exclude_position0" in desc:
                changes["exclude_position0"] = bool(desc["exclude_position0"])
            filled.append(cfg.replace(**changes) if changes else cfg)
        self.configs = filled

    def _build_runs(self) -> None:
        tc = self.train_cfg
        self.runs = []
        for i, (cfg, name) in enumerate(zip(self.configs, self.names)):
            sae = create_sae(cfg, device=self.device, seed=tc.seed + i).train()
            lr = tc.lr if tc.lr is not None else default_lr(cfg.d_sae)
            # fused Adam (one kernel per step on CUDA, vectorised on CPU): same update, less overhead
            fused = self.device.type in ("cpu", "cuda")
            optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps,
                                         fused=fused)
            since = torch.zeros(cfg.d_sae, dtype=torch.int64, device=self.device)
            self.runs.append(_Run(name=name, sae=sae, optimizer=optimizer, base_lr=lr, since_fired=since))

    @torch.no_grad()
    def _initialize(self, source: ActivationSource) -> None:
        """Scales and b_dec from a sample drawn with a different seed than the training order."""
        tc = self.train_cfg
        sample = next(iter(source.batches(tc.init_tokens, seed=tc.seed + 7_777_777, device=self.device)))
        sample = {site: rows.float() for site, rows in sample.items()}
        for site, rows in sample.items():
            if not torch.isfinite(rows).all():
                raise NonFiniteError(f"non-finite activations in the initialisation sample of {site}", 0, None)
        scales = {}
        for site, rows in sample.items():
            mean_norm = float(rows.norm(dim=-1).mean())
            scales[site] = math.sqrt(rows.shape[1]) / mean_norm if tc.normalize_activations and mean_norm > 0 else 1.0
        for run in self.runs:
            cfg = run.sae.cfg
            run.scale_in = scales[cfg.site]
            run.scale_out = scales[cfg.site_out] if cfg.transcoder else run.scale_in
            x = sample[cfg.site] * run.scale_in
            y = sample[cfg.site_out] * run.scale_out if cfg.transcoder else None
            run.sae.initialize_from_data(x, y)
            dd.broadcast_parameters(run.sae)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "train_config": self.train_cfg.resumable_fields(),
            "names": self.names,
            "configs": [cfg.to_dict() for cfg in self.configs],
            "runs": [
                {
                    "name": run.name,
                    "sae": run.sae.state_dict(),
                    "optimizer": run.optimizer.state_dict(),
                    "base_lr": run.base_lr,
                    "scale_in": run.scale_in,
                    "scale_out": run.scale_out,
                    "since_fired": run.since_fired,
                    "history": run.history,
                }
                for run in self.runs
            ],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state["train_config"] != self.train_cfg.resumable_fields():
            raise WorkbenchError(
                "the checkpoint was written with different training settings; resume with the same "
                f"flags or start a new output folder (checkpoint: {state['train_config']})"
            )
        current = [cfg.to_dict() for cfg in self.configs]
        if state["configs"] != current or state["names"] != self.names:
            raise WorkbenchError("the checkpoint holds different dictionaries; resume with the same flags")
        self.step = int(state["step"])
        for run, saved in zip(self.runs, state["runs"]):
            run.sae.load_state_dict(saved["sae"])
            run.optimizer.load_state_dict(saved["optimizer"])
            run.base_lr = float(saved["base_lr"])
            run.scale_in, run.scale_out = float(saved["scale_in"]), float(saved["scale_out"])
            run.since_fired = saved["since_fired"].to(self.device)
            run.history = list(saved["history"])

    def _checkpoint(self) -> Path | None:
        path = None
        if self.out_dir is not None and dd.rank() == 0:
            path = save_checkpoint(self.out_dir, self.step, self._state())
        dd.barrier()
        return path

    # ------------------------------------------------------------------ training
    def fit(self, source: ActivationSource, *, resume: bool = False, time_limit_s: float | None = None) -> TrainResult:
        """Train every dictionary for train_cfg.total_steps steps; save them if out_dir is set.

        time_limit_s: a safety net for fixed-budget runs: past this many seconds of training,
        stop after the current step, checkpoint and save as usual (`stopped_early` is set).
        """
        tc = self.train_cfg
        self._check_source(source)
        self._fill_provenance(source)
        self._source = source
        self._build_runs()
        found = latest_checkpoint(self.out_dir) if (resume and self.out_dir is not None) else None
        if found is not None:
            self._restore(load_checkpoint(found[1], map_location=self.device))
            last_saved = self.step
        else:
            if self.out_dir is not None and latest_checkpoint(self.out_dir) is not None and not resume:
                raise WorkbenchError(
                    f"{self.out_dir} already holds a training run; pass --resume to continue it or choose "
                    "another output folder"
                )
            self._initialize(source)
            last_saved = -1
        start_step, start_time = self.step, time.perf_counter()
        bar = _progress(tc, start_step)
        stream = source.batches(tc.batch_size, seed=tc.seed, start_step=self.step, device=self.device)
        stopped_early = False
        try:
            while self.step < tc.total_steps:
                if time_limit_s is not None and time.perf_counter() - start_time > time_limit_s:
                    stopped_early = True
                    history = self.runs[0].history
                    if self.step > start_step and (not history or history[-1]["step"] != self.step):
                        self._log(bar)
                    break
                batch = next(stream)
                self._check_batch(batch, last_saved)
                self._train_step(batch, last_saved)
                self.step += 1
                if self.step % tc.log_every == 0 or self.step == tc.total_steps:
                    self._log(bar)
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < tc.total_steps:
                    self._checkpoint()
                    last_saved = self.step
                bar.update(1)
        finally:
            bar.close()
        if last_saved != self.step:
            self._checkpoint()
        seconds = time.perf_counter() - start_time
        tokens = (self.step - start_step) * tc.batch_size
        result = self._finish(seconds, tokens)
        result.stopped_early = stopped_early
        return result

    def _check_batch(self, batch: dict[str, torch.Tensor], last_saved: int) -> None:
        bad = [site for site, rows in batch.items() if not bool(torch.isfinite(rows).all())]
        if dd.flag_across_ranks(bool(bad), self.device):
            self._stop(f"non-finite activations (NaN or inf) at {', '.join(bad) or 'another rank'}", last_saved)

    def _stop(self, what: str, last_saved: int) -> None:
        # The weights are still those after step `self.step`: save them (a good state) unless saved.
        path = None
        if self.out_dir is not None:
            path = self._checkpoint() if last_saved != self.step else latest_checkpoint(self.out_dir)[1]
        where = f"; the last good state (after {self.step} steps) is kept in {path}" if path else ""
        raise NonFiniteError(
            f"training stopped at step {self.step} (0-based batch index): {what}{where}. Check the activation "
            "source (a capture from a model in fp16 can overflow) or lower the learning rate",
            self.step,
            path,
        )

    def _train_step(self, batch: dict[str, torch.Tensor], last_saved: int) -> None:
        tc = self.train_cfg
        use_autocast = tc.autocast if tc.autocast is not None else self.device.type == "cuda"
        sparsity_scale = min(1.0, (self.step + 1) / tc.sparsity_warmup) if tc.sparsity_warmup else 1.0
        multiplier = tc.lr_multiplier(self.step)
        window = tc.dead_window
        outputs = []
        for run in self.runs:
            cfg = run.sae.cfg
            x = dd.local_slice(batch[cfg.site]).float() * run.scale_in
            y = dd.local_slice(batch[cfg.site_out]).float() * run.scale_out if cfg.transcoder else None
            dead = run.since_fired >= window
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_autocast):
                out = run.sae.training_step(x, y, dead_mask=dead, sparsity_scale=sparsity_scale)
            outputs.append((run, out, x if y is None else y))
        losses = torch.stack([out.loss.detach().float() for _, out, _ in outputs])
        if dd.flag_across_ranks(not bool(torch.isfinite(losses).all()), self.device):
            self._stop("the loss became non-finite", last_saved)
        for run, out, target in outputs:
            for group in run.optimizer.param_groups:
                group["lr"] = run.base_lr * multiplier
            out.loss.backward()
            dd.average_gradients(run.sae.parameters())
            run.sae.remove_parallel_grad()
            if tc.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(run.sae.parameters(), tc.grad_clip_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.sae.normalize_decoder()
            stats = {key: dd.min_across_ranks(value) for key, value in out.stats.items()}
            run.sae.observe(stats)
            fired = dd.any_across_ranks(out.fired)
            run.since_fired += tc.batch_size
            run.since_fired[fired] = 0
            run.last = {"out": out, "target": target}

    @torch.no_grad()
    def _log(self, bar) -> None:
        tc = self.train_cfg
        for run in self.runs:
            out, target = run.last["out"], run.last["target"]
            target = target.float()
            fvu = float((target - out.x_hat.float()).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12))
            row = {
                "step": self.step,
                "tokens": self.step * tc.batch_size,
                "loss": float(out.loss.detach()),
                "l0": float(out.l0),
                "fvu": fvu,
                "dead_frac": float((run.since_fired >= tc.dead_window).float().mean()),
                "lr": run.base_lr * tc.lr_multiplier(self.step - 1),
            }
            row.update({f"loss_{k}": float(v) for k, v in out.terms.items()})
            run.history.append(row)
        first = self.runs[0].history[-1]
        more = f" (+{len(self.runs) - 1} more)" if len(self.runs) > 1 else ""
        bar.set_postfix_str(
            f"loss {first['loss']:.4g} L0 {first['l0']:.1f} FVU {first['fvu']:.3f} dead {first['dead_frac']:.1%}{more}"
        )

    @torch.no_grad()
    def _calibrate(self) -> None:
        """BatchTopK-style thresholds from the final weights on a fresh sample (see calibrate_threshold)."""
        tc = self.train_cfg
        targets = [run for run in self.runs if hasattr(run.sae, "calibrate_threshold")]
        if not targets:
            return
        sample = next(iter(self._source.batches(tc.init_tokens, seed=tc.seed + 31_337, device=self.device)))
        for run in targets:
            run.sae.calibrate_threshold(sample[run.sae.cfg.site].float() * run.scale_in)
            dd.broadcast_parameters(run.sae)

    def _finish(self, seconds: float, tokens: int) -> TrainResult:
        tc = self.train_cfg
        saes, dirs = {}, {}
        self._calibrate()
        for run in self.runs:
            final = copy.deepcopy(run.sae).eval()
            final.fold_scaling(run.scale_in, run.scale_out)
            last = run.history[-1] if run.history else {}
            final.metadata = {
                "training": {
                    "tokens": self.step * tc.batch_size,
                    "steps": self.step,
                    "batch_size": tc.batch_size,
                    "lr": run.base_lr,
                    "seed": tc.seed,
                    "scale_in": run.scale_in,
                    "scale_out": run.scale_out,
                    "final_loss": last.get("loss"),
                    "final_l0": last.get("l0"),
                    "final_batch_fvu": last.get("fvu"),
                    "dead_frac": last.get("dead_frac"),
                    "dead_window_tokens": tc.dead_window,
                    "world_size": self.world,
                    "backend": dd.backend(),
                }
            }
            saes[run.name] = final
            if self.out_dir is not None:
                folder = self.out_dir / run.name if run.name else self.out_dir
                dirs[run.name] = folder
                if dd.rank() == 0:
                    save_sae(final, folder, dtype=tc.save_dtype)
        if self.out_dir is not None and dd.rank() == 0:
            write_json(self.out_dir / "train_history.json", {run.name or "sae": run.history for run in self.runs})
        dd.barrier()
        return TrainResult(
            saes=saes,
            history={run.name: run.history for run in self.runs},
            out_dirs=dirs,
            steps=self.step,
            tokens=self.step * tc.batch_size,
            seconds=seconds,
            tokens_per_second=tokens / seconds if seconds > 0 else float("nan"),
        )


def _progress(tc: TrainConfig, start_step: int):
    from tqdm.auto import tqdm

    return tqdm(total=tc.total_steps, initial=start_step, unit="step", desc="train SAE",
                disable=not tc.progress or dd.rank() != 0, dynamic_ncols=True)


def train_saes(configs: Sequence[SaeConfig] | SaeConfig, train_cfg: TrainConfig, source: ActivationSource, *,
               out_dir: str | Path | None = None, names: Sequence[str] | None = None,
               resume: bool = False) -> TrainResult:
    """Train one dictionary or a sweep on `source`; see Trainer."""
    if isinstance(configs, SaeConfig):
        configs = [configs]
    return Trainer(configs, train_cfg, out_dir=out_dir, names=names).fit(source, resume=resume)
