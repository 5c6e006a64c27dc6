"""Launch-config choice for the Triton kernels: a small built-in candidate list per kernel.

On CUDA the first call for a shape bucket times every candidate (triton's `do_bench`,
median of a few milliseconds each; a candidate that fails to compile or launch, e.g. out
of shared memory or registers, is skipped) and caches the fastest. Under the Triton
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

    def pick(self, key: tuple, device: torch.device, launch: Callable[[dict], object]) -> dict:
        """The config for `key`; times the candidates with `launch(config)` on first use (CUDA)."""
        forced = _forced.get(self.name)
        if forced is not None:
            return forced
        config = self.chosen.get(key)
        if config is not None:
            return config
        if device.type != "cuda" or interpreting() or os.environ.get("WORKBENCH_KERNELS_TUNE", "1") == "0":
            config = self.candidates[0]
        else:
            config = self._time_candidates(key, launch)
        self.chosen[key] = config
        return config

    def _time_candidates(self, key: tuple, launch: Callable[[dict], object]) -> dict:
        from triton.testing import do_bench

        timings = []
        for config in self.candidates:
            try:
                launch(config)  # compile + correctness of the launch itself
                torch.cuda.synchronize()
                timings.append((do_bench(lambda: launch(config), warmup=2, rep=8, return_mode="median"), config))
            except Exception as error:  # noqa: BLE001 (a config that cannot run is just skipped)
                log.info("kernels: %s config %s skipped for %s: %s", self.name, config, key, str(error).splitlines()[0][:200])
        if not timings:
            raise RuntimeError(f"no launch config of kernel {self.name} runs for shape key {key}")
        best_ms, best = min(timings, key=lambda item: item[0])
        log.info("kernels: %s %s -> %s (%.4f ms)", self.name, key, best, best_ms)
        return best


_split_cache: dict[int, tuple[dict, dict, dict]] = {}


def launch_args(config: dict) -> tuple[dict, dict]:
    """Split a config into (constexpr kwargs, launch kwargs num_warps/num_stages); cached per
    config object (the candidate dicts live as long as the process)."""
    split = _split_cache.get(id(config))
    if split is None or split[2] is not config:
        meta = {name: value for name, value in config.items() if name not in ("num_warps", "num_stages")}
        launch = {name: config[name] for name in ("num_warps", "num_stages") if name in config}
        split = _split_cache[id(config)] = (meta, launch, config)
    return split[0], split[1]


def bucket(n: int) -> int:
    """A shape bucket: the next power of two (so tuning runs once per size class)."""
    return 1 << max(0, int(n - 1).bit_length())
