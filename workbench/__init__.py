"""Sparse Workbench: capture activations, train and read sparse dictionaries, steer models,
find circuits, and study sparse attention and learned sparse retrieval, offline.

    import workbench as wb
    model = wb.load_model("smollm2-135m")
    cap = model.capture(["The cat sat on the mat."], sites=["blocks.15.hook_resid_post"])
    cap.acts["blocks.15.hook_resid_post"].shape   # [tokens, 576]

Names are imported lazily so `import workbench` stays fast and side-effect free.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_model": "workbench.engine.registry",
    "list_models": "workbench.engine.registry",
    "Model": "workbench.engine.model",
    "Capture": "workbench.engine.capture",
    "ActivationStore": "workbench.engine.store",
    "capture_to_store": "workbench.engine.store",
    "load_corpus": "workbench.corpora",
    "pack_corpus": "workbench.corpora",
    "list_corpora": "workbench.corpora",
    "load_sae": "workbench.sae.loading",
    "kl_finetune": "workbench.sae.finetune",
    "open_store": "workbench.features.store",
    "FeatureStore": "workbench.features.store",
    "steer": "workbench.steering",
    "WorkbenchError": "workbench.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__():
    return __all__
