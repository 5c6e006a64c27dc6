"""Features: harvest what each SAE latent responds to into a SQLite store, and query it.

    from workbench.features import HarvestConfig, harvest, FeatureStore, open_store
    harvest(model, sae, "feats.sqlite", HarvestConfig(n_tokens=200_000), sae_name="batchtopk-l15-8k")
    store = open_store("smollm2-135m", "batchtopk-l15-8k")       # a registered SAE's store
    card = store.card(123)

Modules:
    harvest     HarvestConfig, harvest / harvest_many (batched, resumable, progress bar)
    accumulate  running per-latent statistics (top-k merges, reservoir, histograms, co-firing)
    finalize    derived tables (examples, logit effects, neighbours, UMAP, features by token)
    schema      the versioned SQLite schema; writer  atomic store writing
    store       FeatureStore (cards, lists, scores, explanations), open_store, resolve_feature_id
    search      features_by_token, features_for_text, search_text (FTS5), feature_on_text
    export      a feature card as one self-contained HTML file

The harvest names are imported eagerly: the function `harvest` shares its name with its
module, and a lazy attribute would be replaced by the module as soon as anything imported
`workbench.features.harvest`. The rest is imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from workbench.features.harvest import HarvestConfig, HarvestSummary, HarvestTarget, harvest, harvest_many

_EXPORTS = {
    "FeatureStore": "workbench.features.store",
    "FeatureCard": "workbench.features.store",
    "Example": "workbench.features.store",
    "open_store": "workbench.features.store",
    "resolve_feature_id": "workbench.features.store",
    "SCHEMA_VERSION": "workbench.features.schema",
    "features_by_token": "workbench.features.search",
    "features_for_text": "workbench.features.search",
    "search_text": "workbench.features.search",
    "feature_on_text": "workbench.features.search",
    "export_card_html": "workbench.features.export",
}

__all__ = sorted([*_EXPORTS, "HarvestConfig", "HarvestSummary", "HarvestTarget", "harvest", "harvest_many"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.features' has no attribute {name!r}")


def __dir__():
    return __all__
