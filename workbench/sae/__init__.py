"""Sparse dictionaries: every major SAE architecture, transcoders, a trainer, evaluations, files.

Public names:
    SaeConfig, ARCHITECTURE_NAMES         what a dictionary is (config.py)
    SparseAutoencoder, create_sae         the shared interface and a fresh dictionary (base.py, registry.py)
    save_sae, load_sae                    SAELens v6 folders; load_sae also imports sparsify and
                                          dictionary_learning and checks against a model (io.py, loading.py)
    TrainConfig, Trainer, train_saes      the trainer (train.py) over activation sources (sources.py)
    evaluate_sae, reconstruction_metrics  evaluations (evals.py)

Heavy submodules are imported on first use so `import workbench.sae` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from workbench.sae.base import SparseAutoencoder, StepOutput
from workbench.sae.config import ARCHITECTURE_NAMES, SaeConfig
from workbench.sae.registry import ARCHITECTURES, create_sae, sae_class

_LAZY = {
    "save_sae": "workbench.sae.io",
    "read_sae_folder": "workbench.sae.io",
    "load_sae": "workbench.sae.loading",
    "import_sparsify": "workbench.sae.importers",
    "import_dictionary_learning": "workbench.sae.importers",
    "TrainConfig": "workbench.sae.train",
    "Trainer": "workbench.sae.train",
    "train_saes": "workbench.sae.train",
    "TensorSource": "workbench.sae.sources",
    "StoreSource": "workbench.sae.sources",
    "LiveSource": "workbench.sae.sources",
    "evaluate_sae": "workbench.sae.evals",
    "reconstruction_metrics": "workbench.sae.evals",
    "downstream_metrics": "workbench.sae.evals",
}

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_NAMES",
    "SaeConfig",
    "SparseAutoencoder",
    "StepOutput",
    "create_sae",
    "sae_class",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.sae' has no attribute {name!r}")
