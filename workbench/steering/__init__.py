"""Steering: interventions during generation, feature selection by input/output score,
and dose-response evaluation.

    from workbench.steering import AddFeature, steer
    result = steer(model, "From my experience,", [AddFeature(sae, 123, coef=4.0)], max_new_tokens=32)
    result.baseline[0], result.steered[0]

Modules:
    interventions  AddFeature, AddVector, ClampFeature, AblateFeatures, Arm (edits at sites)
    vectors        typical_norm (the "norm" unit), diff_in_means, random_direction, load/save_vector
    continuations  steer (baseline + steered in one call), run_arms (many conditions, batched)
    scores         logit-lens tokens, input and output scores (Arad, Mueller, Belinkov 2025)
    evaluation     concept score, perplexity, repetition, dose_response sweeps with a random control
    resolve        SAEs by registered name or folder, feature ids
    scores_store   writing the scores into a feature store

Names are imported lazily so `import workbench.steering` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AddFeature": "workbench.steering.interventions",
    "AddVector": "workbench.steering.interventions",
    "ClampFeature": "workbench.steering.interventions",
    "AblateFeatures": "workbench.steering.interventions",
    "Arm": "workbench.steering.interventions",
    "MAX_COEF": "workbench.steering.interventions",
    "typical_norm": "workbench.steering.vectors",
    "diff_in_means": "workbench.steering.vectors",
    "random_direction": "workbench.steering.vectors",
    "load_vector": "workbench.steering.vectors",
    "save_vector": "workbench.steering.vectors",
    "steer": "workbench.steering.continuations",
    "run_arms": "workbench.steering.continuations",
    "SteerResult": "workbench.steering.continuations",
    "logit_lens_tokens": "workbench.steering.scores",
    "output_scores": "workbench.steering.scores",
    "input_scores": "workbench.steering.scores",
    "dose_response": "workbench.steering.evaluation",
    "concept_token_ids": "workbench.steering.evaluation",
    "word_token_ids": "workbench.steering.evaluation",
    "perplexity": "workbench.steering.evaluation",
    "repetition_rate": "workbench.steering.evaluation",
    "resolve_sae": "workbench.steering.resolve",
    "write_scores": "workbench.steering.scores_store",
    "read_scores": "workbench.steering.scores_store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.steering' has no attribute {name!r}")


def __dir__():
    return __all__
