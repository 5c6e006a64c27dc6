"""`load_sae(path, model=None)`: open any supported SAE folder and, given a model, check it fits.

Formats (detected from the files): the SAELens v6 layout (ours and SAELens'), EleutherAI
sparsify hookpoint folders, dictionary_learning `ae.pt` folders (see importers.py).

With a model, loading checks what users most often get silently wrong:
1. the site exists in the model and its width equals `d_in` (and `d_out` at `site_out`
   for a transcoder): a mismatch raises WorkbenchError;
2. on a few hundred tokens of built-in English text, the fraction of variance the SAE
   leaves unexplained: above 0.5 it warns (`warnings.warn`), since that is the signature
   of a wrong site, a wrong layer, or an activation normalisation that was never folded
   into the weights. The figures are kept on `sae.load_check`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.sae.base import SparseAutoencoder
from workbench.sae.importers import detect_format, import_dictionary_learning, import_sparsify
from workbench.sae.io import read_sae_folder

FVU_WARNING_THRESHOLD = 0.5

# Plain English prose written for this check (a few hundred tokens for most tokenizers).
SAMPLE_TEXTS = (
    "The river runs slowly through the old town, past the market square and the stone bridge "
    "that was rebuilt after the flood. In the morning the bakers open their shutters, and the "
    "smell of fresh bread drifts across the water while the first boats leave the harbour.",
    "To install the package, create a virtual environment, activate it, and run the installer "
    "with the list of pinned requirements. If the build fails, read the error message from the "
    "top: the first line usually names the missing library and the version it expected.",
    "A good experiment changes one thing at a time. Write down what you expect before you look at "
    "the result, keep the seed fixed, and repeat the measurement until the noise is smaller than "
    "the effect you want to see. Then try to break your own conclusion.",
    "She opened the letter carefully, as if the paper might crumble, and read it twice before she "
    "understood that her brother was coming home after eleven years at sea. Outside, the children "
    "were still arguing about whose turn it was to feed the goat.",
    "In mathematics, a function maps every element of one set to exactly one element of another. "
    "The derivative measures how quickly the output changes when the input moves a little, and the "
    "integral adds up many small pieces to find an area or a total amount.",
)


def load_sae(
    path: str | Path,
    model: Any = None,
    *,
    site: str | None = None,
    site_out: str | None = None,
    hookpoint: str | None = None,
    dtype: str | None = "float32",
    device: torch.device | str | None = None,
    check_tokens: int = 256,
) -> SparseAutoencoder:
    """Load an SAE folder (any supported format) in eval mode.

    path: a SAELens-layout folder, a sparsify hookpoint folder (or run folder with
        `hookpoint`), a dictionary_learning trainer folder or its `ae.pt`.
    model: a workbench Model; when given, the site and widths are checked (errors) and the
        FVU on `check_tokens` tokens is measured (warning above 0.5). The SAE moves to the
        model's device.
    site / site_out: override the site(s) recorded in (or missing from) the file.
    dtype: parameter dtype after loading ("float32" default; None keeps the file's).
    """
    path = Path(path)
    if not path.exists():
        raise WorkbenchError(f"{path} does not exist; pass an SAE folder (cfg.json + sae_weights.safetensors)")
    if path.is_file():
        if path.suffix == ".pt":
            sae = import_dictionary_learning(path, site=site, dtype=dtype)
        else:
            raise WorkbenchError(f"{path} is a file; pass the SAE's folder (or a dictionary_learning ae.pt)")
    else:
        fmt = detect_format(path)
        if fmt == "saelens":
            sae = read_sae_folder(path, dtype=dtype)
        elif fmt in ("sparsify", "sparsify_run"):
            sae = import_sparsify(path, hookpoint=hookpoint, site=site, dtype=dtype)
        else:
            sae = import_dictionary_learning(path, site=site, dtype=dtype)
    changes = {}
    if site is not None:
        changes["site"] = site
    if site_out is not None:
        changes["site_out"] = site_out
    if changes:
        sae.cfg = sae.cfg.replace(**changes)
    if device is not None:
        sae.to(device)
    if model is not None:
        check_against_model(sae, model, check_tokens=check_tokens)
    return sae


def check_against_model(sae: SparseAutoencoder, model: Any, *, check_tokens: int = 256) -> dict[str, Any]:
    """Raise on a site/width mismatch; measure FVU on sample text and warn when > 0.5."""
    cfg = sae.cfg
    if not cfg.site:
        raise WorkbenchError(
            "the SAE does not record which site it reads; pass site= (e.g. 'blocks.6.hook_resid_post')"
        )
    model.check_site(cfg.site)
    width = model.site_width(cfg.site)
    if width != cfg.d_in:
        raise WorkbenchError(
            f"d_in mismatch: the SAE expects inputs of width {cfg.d_in} but {cfg.site} of {model.name} "
            f"has width {width}; pick the SAE trained for this model and site"
        )
    out_site = cfg.output_site
    if cfg.transcoder:
        if not cfg.site_out:
            raise WorkbenchError("the transcoder does not record its output site; pass site_out=")
        model.check_site(out_site)
        out_width = model.site_width(out_site)
        if out_width != cfg.d_out:
            raise WorkbenchError(
                f"d_out mismatch: the transcoder predicts width {cfg.d_out} but {out_site} of {model.name} "
                f"has width {out_width}"
            )
    if cfg.model_name and cfg.model_name != model.name:
        warnings.warn(
            f"this SAE was trained on {cfg.model_name!r}, not {model.name!r}; check that the models match",
            stacklevel=3,
        )
    sae.to(model.device)
    report: dict[str, Any] = {"site": cfg.site, "n_tokens": 0, "fvu": None}
    if check_tokens > 0:
        sites = [cfg.site] if out_site == cfg.site else [cfg.site, out_site]
        cap = model.capture(list(SAMPLE_TEXTS), sites, max_tokens=check_tokens, drop_bos=cfg.exclude_position0)
        x = cap.acts[cfg.site].to(sae.W_dec.device)
        y = cap.acts[out_site].to(sae.W_dec.device)
        with torch.no_grad():
            y_hat = sae(x).float()
        y = y.float()
        fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12))
        report.update(n_tokens=int(x.shape[0]), fvu=fvu)
        if not fvu <= FVU_WARNING_THRESHOLD:
            warnings.warn(
                f"the SAE explains little of {cfg.site} on {model.name}: FVU={fvu:.3f} on {x.shape[0]} tokens "
                f"(> {FVU_WARNING_THRESHOLD}). Usual causes: a wrong site or layer, a different model, or an "
                "activation normalisation that was not folded into the weights",
                stacklevel=3,
            )
    sae.load_check = report
    return report
