"""The engine: models wrapped in nnsight, activation capture, edits, and the activation store.

nnsight `trace` blocks live only in this package; the rest of the workbench asks it
for tensors.
"""

from workbench.engine.registry import DEFAULT_MODEL, list_models, load_model

__all__ = ["DEFAULT_MODEL", "list_models", "load_model"]
