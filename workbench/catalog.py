"""The registered artifacts: shipped SAEs and feature stores, by name.

The app and the notebooks open artifacts by (model, SAE name) through this catalog and
never by a path typed into the UI. Layout under the data folder (`workbench.paths.data_dir`):

    data/saes/<model>/<sae_name>/cfg.json + sae_weights.safetensors + eval.json
    data/features/<model>/<sae_name>.sqlite

Extra folders can be registered with the environment variable WORKBENCH_SAE_DIRS
(os.pathsep-separated roots laid out like `data/saes`), which is how tests and users
add their own SAEs to the app without exposing arbitrary paths.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UnknownNameError
from workbench.paths import data_dir

# The SAE the app opens with, per model.
DEFAULT_SAES = {"smollm2-135m": "batchtopk-l15-8k"}


@dataclass(frozen=True)
class SaeEntry:
    """A registered SAE: where its files are and what it reads."""

    model: str
    name: str
    folder: Path
    site: str
    architecture: str
    d_sae: int

    @property
    def feature_store(self) -> Path:
        """Where its feature store lives (it may not exist yet)."""
        return self.folder.parent.parent.parent / "features" / self.model / f"{self.name}.sqlite"

    def feature_id(self, index: int) -> str:
        """The canonical feature id `MODEL/SITE/SAE_NAME/INDEX`."""
        return f"{self.model}/{self.site}/{self.name}/{index}"


def sae_roots() -> list[Path]:
    roots = [data_dir() / "saes"]
    extra = os.environ.get("WORKBENCH_SAE_DIRS", "")
    roots += [Path(p) for p in extra.split(os.pathsep) if p]
    return roots


def _read_entry(model: str, folder: Path) -> SaeEntry | None:
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        return None
    metadata = cfg.get("metadata") or {}
    architecture = metadata.get("workbench_architecture") or cfg.get("architecture", "?")
    return SaeEntry(model=model, name=folder.name, folder=folder, site=metadata.get("hook_name", "?"),
                    architecture=architecture, d_sae=int(cfg.get("d_sae", 0)))


def list_saes(model: str | None = None) -> list[SaeEntry]:
    """Registered SAEs (optionally of one model), sorted by model and name."""
    entries = []
    for root in sae_roots():
        if not root.is_dir():
            continue
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if model is not None and model_dir.name != model:
                continue
            for folder in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                entry = _read_entry(model_dir.name, folder)
                if entry is not None:
                    entries.append(entry)
    return entries


def get_sae(model: str, name: str) -> SaeEntry:
    """The registered SAE `name` of `model`; UnknownNameError lists the registered ones."""
    entries = list_saes(model)
    for entry in entries:
        if entry.name == name:
            return entry
    raise UnknownNameError(f"SAE of {model}", name, [e.name for e in entries],
                           hint="SAEs are registered under data/saes/<model>/ or $WORKBENCH_SAE_DIRS")


def default_sae(model: str) -> SaeEntry | None:
    """The SAE a page opens with for this model (None when none is registered)."""
    entries = list_saes(model)
    preferred = DEFAULT_SAES.get(model)
    for entry in entries:
        if entry.name == preferred:
            return entry
    return entries[0] if entries else None


def parse_feature_id(feature_id: str) -> tuple[str, str, str, int]:
    """Split `MODEL/SITE/SAE_NAME/INDEX`; the model part may itself contain '/' (HF ids)."""
    from workbench.errors import WorkbenchError

    parts = feature_id.strip().split("/")
    if len(parts) < 4 or not parts[-1].isdigit():
        raise WorkbenchError(f"{feature_id!r} is not a feature id; expected MODEL/SITE/SAE_NAME/INDEX")
    return "/".join(parts[:-3]), parts[-3], parts[-2], int(parts[-1])
