"""Where input and output scores live: columns of the feature store, plus a sidecar file.

The Features and Steering pages rank and filter features by `input_score` and
`output_score`. The feature store (`workbench.features.store.FeatureStore`, SQLite) keeps
them as nullable per-feature columns written in bulk with `set_scores(name, values)`.
The scores are also written beside the store as `<sae_name>.scores.safetensors`
(float32 [d_sae] per name, NaN = not scored, provenance in the metadata), because they
can be computed before the store is harvested (they need only the SAE and the model) and
so that `read_scores` works with or without a store.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workbench.errors import WorkbenchError

SCORE_NAMES = ("input_score", "output_score")


def sidecar_path(store_path: str | Path) -> Path:
    """`data/features/<model>/<sae>.sqlite` -> `data/features/<model>/<sae>.scores.safetensors`."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + ".scores.safetensors")


def _check(name: str, values: torch.Tensor, d_sae: int | None) -> torch.Tensor:
    if name not in SCORE_NAMES:
        raise WorkbenchError(f"unknown score {name!r}; expected one of {', '.join(SCORE_NAMES)}")
    values = torch.as_tensor(values).detach().float().cpu().reshape(-1)
    if d_sae is not None and values.numel() != d_sae:
        raise WorkbenchError(f"{name} has {values.numel()} values but the SAE has {d_sae} features")
    return values


def _open_store(store_path: Path):
    """The features engineer's FeatureStore at store_path, or None when there is none yet."""
    if not store_path.is_file():
        return None
    try:
        from workbench.features.store import FeatureStore
    except ImportError:
        return None
    return FeatureStore(store_path)


def write_scores(store_path: str | Path, scores: dict[str, torch.Tensor], *, d_sae: int | None = None,
                 metadata: dict | None = None) -> dict[str, str]:
    """Write scores (name -> [d_sae]) to the sidecar file and, when it exists, the feature store.

    Existing scores of other names in the sidecar are kept. Returns where each went.
    """
    from workbench.atomic import save_safetensors

    store_path = Path(store_path)
    checked = {name: _check(name, values, d_sae) for name, values in scores.items()}
    if not checked:
        raise WorkbenchError("no scores to write")
    sidecar = sidecar_path(store_path)
    merged, meta = _read_sidecar(sidecar)
    merged.update(checked)
    meta.update({name: json.dumps(metadata or {}) for name in checked})
    save_safetensors(sidecar, merged, metadata=meta)
    written = {name: str(sidecar) for name in checked}
    store = _open_store(store_path)
    if store is not None:
        try:
            for name, values in checked.items():
                store.set_scores(name, values.numpy())
                written[name] += f" + {store_path}"
        finally:
            store.close()
    return written


def _read_sidecar(sidecar: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not sidecar.is_file():
        return {}, {}
    from safetensors import safe_open

    try:
        with safe_open(str(sidecar), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            meta = dict(handle.metadata() or {})
    except Exception as error:  # damaged file: say which
        raise WorkbenchError(f"cannot read the scores file {sidecar}: {error}; delete it and rescore") from error
    return tensors, meta


def read_scores(store_path: str | Path, d_sae: int | None = None) -> dict[str, torch.Tensor]:
    """Scores known for an SAE (name -> float32 [d_sae], NaN = not scored); {} when none.

    The feature store's columns win where they hold values; the sidecar fills the rest.
    """
    store_path = Path(store_path)
    tensors, _ = _read_sidecar(sidecar_path(store_path))
    out = {}
    for name, values in tensors.items():
        if name in SCORE_NAMES and (d_sae is None or values.numel() == d_sae):
            out[name] = values.float()
    store = _open_store(store_path)
    if store is not None:
        try:
            present = store.has_scores()
            for name in SCORE_NAMES:
                if present.get(name) and (d_sae is None or store.d_sae == d_sae):
                    out[name] = torch.from_numpy(store.scores(name)).float()
        finally:
            store.close()
    return out
