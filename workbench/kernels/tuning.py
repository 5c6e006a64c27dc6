"""Launch-config choice for the Triton kernels: a small built-in candidate list per kernel.

On CUDA the first call for a shape bucket times every candidate (triton's `do_bench`,
median of a few milliseconds each; a candidate that fails to compile or launch, e.g. out
of shared memory or registers, is skipped) and caches the fastest. When the launcher
names its outputs, every candidate's outputs are also compared with the first working
candidate's (2% of the largest magnitude for floats, exact for integers) and a candidate
that disagrees is rejected with a warning: a miscompiled or wrong config can never win
the timing. Under the Triton
interpreter (CPU tests) timing means nothing, so the first candidate is used, unless a
test forces one with `force_config`. `WORKBENCH_KERNELS_TUNE=0` skips timing on CUDA too
and takes the first candidate (quick start, e.g. for a one-off inspection).

Every kernel tuned here overwrites its outputs completely, so launching it several times
while timing leaves the same result.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

log = logging.getLogger("workbench.kernels")

_forced: dict[str, dict] = {}


@contextlib.contextmanager
def force_config(kernel: str, config: dict) -> Iterator[None]:
    """Use `config` for every launch of `kernel` inside the block (tests cover each candidate)."""
    previous = _forced.get(kernel)
    _forced[kernel] = config
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(kernel, None)
        else:
            _forced[kernel] = previous


def forced_config(kernel: str) -> dict | None:
    """The config `force_config` set for `kernel`, if any (for launchers that do not time candidates)."""
    return _forced.get(kernel)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass
class Tuner:
    """Candidate launch configs of one kernel and the choice made per shape key."""

    name: str
    """Kernel name, used in logs and by `force_config`."""
    candidates: list[dict]
    """Configs (constexpr block sizes plus num_warps / num_stages); the first is the default."""
    chosen: dict = field(default_factory=dict)
    """key -> config picked so far in this process."""
    rejected: dict = field(default_factory=dict)
    """key -> configs whose outputs disagreed with the first candidate's (see `pick`)."""
    timings: dict = field(default_factory=dict)
    """key -> [(config, median ms)] of every candidate timed (for benchmark reports)."""

    def pick(
        self,
        key: tuple,
        device: torch.device,
        launch: Callable[[dict], object],
        outputs: Callable[[], tuple[torch.Tensor, ...]] | None = None,
    ) -> dict:
        """The config for `key`; times the candidates with `launch(config)` on first use (CUDA).

        `outputs()` returns the tensors a launch writes; with it, candidates are also
        checked against each other before any timing counts.
        """
        forced = _forced.get(self.name)
        if forced is not None:
            return forced
        config = self.chosen.get(key)
        if config is not None:
            return config
        if device.type != "cuda" or interpreting() or os.environ.get("WORKBENCH_KERNELS_TUNE", "1") == "0":
            config = self.candidates[0]
        else:
            config = self._time_candidates(key, launch, outputs)
        self.chosen[key] = config
        return config

    def _time_candidates(self, key: tuple, launch: Callable[[dict], object], outputs) -> dict:
        from triton.testing import do_bench

        timings = []
        reference = reference_config = None
        for config in self.candidates:
            try:
                launch(config)  # compile + correctness of the launch itself
                torch.cuda.synchronize()
                if outputs is not None:
                    produced = [tensor.detach().clone() for tensor in outputs()]
                    if reference is None:
                        reference, reference_config = produced, config
                    elif not outputs_agree(produced, reference):
                        self.rejected.setdefault(key, []).append(config)
                        log.warning("kernels: %s config %s rejected for %s: its outputs differ from config %s's",
                                    self.name, config, key, reference_config)
                        continue
                timings.append((do_bench(lambda: launch(config), warmup=2, rep=8, return_mode="median"), config))
            except Exception as error:  # noqa: BLE001 (a config that cannot run is just skipped)
                log.info("kernels: %s config %s skipped for %s: %s", self.name, config, key, str(error).splitlines()[0][:200])
        if not timings:
            raise RuntimeError(f"no launch config of kernel {self.name} runs for shape key {key}")
        self.timings[key] = [(config, ms) for ms, config in timings]
        best_ms, best = min(timings, key=lambda item: item[0])
        log.info("kernels: %s %s -> %s (%.4f ms)", self.name, key, best, best_ms)
        return best


def outputs_agree(produced: list[torch.Tensor], reference: list[torch.Tensor]) -> bool:
    """Same shapes; floats within 2% of the reference's largest magnitude (NaN where it has NaN); integers equal."""
    for got, want in zip(produced, reference):
        if got.shape != want.shape or got.dtype != want.dtype:
            return False
        if not got.is_floating_point():
            if not torch.equal(got, want):
                return False
            continue
        if got.numel() == 0:
            continue
        got, want = got.float(), want.float()
        if not torch.equal(torch.isfinite(got), torch.isfinite(want)):
            return False
        finite = torch.isfinite(want)
        if not bool(finite.any()):
            continue
        scale = float(want[finite].abs().max())
        if float((got[finite] - want[finite]).abs().max()) > 2e-2 * max(scale, 1e-30):
            return False
    return True


# Config keys the launcher reads itself (not kernel arguments): `per_sm` caps a persistent
# kernel's grid at that many programs per multiprocessor.
LAUNCHER_KEYS = ("num_warps", "num_stages", "per_sm")

_split_cache: dict[int, tuple[dict, dict, dict]] = {}


def launch_args(config: dict) -> tuple[dict, dict]:
    """Split a config into (constexpr kwargs, launch kwargs num_warps/num_stages); cached per
    config object (the candidate dicts live as long as the process). Launcher-only keys
    (`per_sm`) go to neither."""
    split = _split_cache.get(id(config))
    if split is None or split[2] is not config:
        meta = {name: value for name, value in config.items() if name not in LAUNCHER_KEYS}
        launch = {name: config[name] for name in ("num_warps", "num_stages") if name in config}
        split = _split_cache[id(config)] = (meta, launch, config)
    return split[0], split[1]


def tuning_forced() -> bool:
    """Whether any kernel's launch config is forced right now (see force_config)."""
    return bool(_forced)


def bucket(n: int) -> int:
    """A shape bucket: the next power of two (so tuning runs once per size class)."""
    return 1 << max(0, int(n - 1).bit_length())
