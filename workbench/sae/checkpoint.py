"""Training checkpoints: written atomically, read with `torch.load(weights_only=True)`.

Layout under the run folder:

    checkpoints/step_00000500/state.pt   every dictionary's weights, buffers, Adam state,
                                         dead-latent counters, scales and history
    checkpoints/latest.json              {"step": 500, "file": "step_00000500/state.pt"}

`latest.json` is replaced (atomically) only after the state file is complete, so a crash
while writing leaves the previous checkpoint in force. Older step folders are pruned,
keeping the newest `keep` of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from workbench.atomic import atomic_path, write_json
from workbench.errors import CorruptFileError

LATEST = "latest.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) for `step`; returns its path."""
    folder = checkpoint_dir(run_dir)
    name = f"step_{step:08d}"
    target = folder / name / "state.pt"
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    write_json(folder / LATEST, {"step": int(step), "file": f"{name}/state.pt"})
    steps = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """(step, state path) of the newest complete checkpoint, None when there is none."""
    pointer = checkpoint_dir(run_dir) / LATEST
    if not pointer.exists():
        return None
    try:
        info = json.loads(pointer.read_text())
        step, path = int(info["step"]), checkpoint_dir(run_dir) / info["file"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CorruptFileError(f"{pointer} is damaged ({error}); delete the checkpoints folder to restart") from None
    if not path.exists():
        raise CorruptFileError(f"{pointer} names {path}, which is missing; delete the checkpoints folder to restart")
    return step, path


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint state (weights_only: no arbitrary objects are unpickled)."""
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as error:  # truncated or foreign files raise several types
        raise CorruptFileError(f"{path} could not be read as a checkpoint ({error})") from None
