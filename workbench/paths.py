"""Where the workbench finds its shipped data and keeps its caches.

`data_dir()` is the repository's `data/` folder (shipped corpora, SAEs, feature
stores), overridable with `WORKBENCH_DATA`. `cache_dir()` is a per-user cache
(`$WORKBENCH_CACHE`, else `$XDG_CACHE_HOME/sparse-workbench`, else
`~/.cache/sparse-workbench`) for things derived once, such as the de-quantised
SmolLM2 weights.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The shipped-artifact folder (`data/` beside the package, or $WORKBENCH_DATA)."""
    return Path(os.environ.get("WORKBENCH_DATA", REPO_ROOT / "data"))


def cache_dir() -> Path:
    """The per-user cache folder, created on first use."""
    root = os.environ.get("WORKBENCH_CACHE")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
        root = os.path.join(xdg, "sparse-workbench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
