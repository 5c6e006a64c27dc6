"""Finding the SAE and feature a steering request names.

    open_sae(model, name)                  a registered SAE of the model (the app's only way in)
    resolve_sae(model, name_or_folder)     the same, or an SAE folder path (CLI and notebooks)
    feature_from_id(model, feature_id)     "MODEL/SITE/SAE_NAME/INDEX" -> (entry, sae, index)

Loaded SAEs are cached per process (keyed by folder and model), so the app does not reload
an SAE on every request; loading checks the SAE against the model once (site, width, FVU).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

from workbench.errors import UnknownNameError, WorkbenchError

_cache: dict[tuple[str, str, str], object] = {}
_cache_lock = threading.Lock()


def _load(model, folder: Path):
    from workbench.sae import load_sae

    key = (str(Path(folder).resolve()), model.name, str(model.device))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    with warnings.catch_warnings():
        # A weak-FVU warning is for the person who trained the SAE; steering still works.
        warnings.simplefilter("ignore")
        sae = load_sae(folder, model=model, check_tokens=0)
    sae.eval()
    for parameter in sae.parameters():
        parameter.requires_grad_(False)
    with _cache_lock:
        _cache.setdefault(key, sae)
        return _cache[key]


def open_sae(model, name: str):
    """(SaeEntry, SparseAutoencoder) of a registered SAE of `model`; UnknownNameError lists them."""
    from workbench.catalog import get_sae

    entry = get_sae(model.name, name)
    return entry, _load(model, entry.folder)


def resolve_sae(model, name_or_folder: str):
    """(SaeEntry or None, SparseAutoencoder): a registered SAE name of the model, else a folder."""
    from workbench.catalog import list_saes

    spec = str(name_or_folder).strip()
    if not spec:
        raise WorkbenchError("no SAE given; pass a registered SAE name or an SAE folder")
    registered = [e.name for e in list_saes(model.name)]
    if spec in registered:
        return open_sae(model, spec)
    path = Path(spec).expanduser()
    if path.exists():
        return None, _load(model, path)
    raise UnknownNameError(f"SAE of {model.name}", spec, registered,
                           hint="or pass the path of an SAE folder (cfg.json + sae_weights.safetensors)")


def feature_from_id(model, feature_id: str):
    """(SaeEntry, SparseAutoencoder, index) for "MODEL/SITE/SAE_NAME/INDEX" of a registered SAE."""
    from workbench.catalog import parse_feature_id
    from workbench.steering.interventions import check_feature

    model_name, site, sae_name, index = parse_feature_id(feature_id)
    if model_name != model.name:
        raise WorkbenchError(f"feature {feature_id} belongs to {model_name}, but the loaded model is {model.name}")
    entry, sae = open_sae(model, sae_name)
    if entry.site != site:
        raise WorkbenchError(f"feature {feature_id} names site {site}, but SAE {sae_name} reads {entry.site}")
    return entry, sae, check_feature(sae, index)
