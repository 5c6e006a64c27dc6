"""Importers for the two other common SAE formats: EleutherAI sparsify and dictionary_learning.

sparsify (one folder per hookpoint): `cfg.json` {activation, k, num_latents |
expansion_factor, transcode, skip_connection, normalize_decoder, d_in, ...} and
`sae.safetensors` {encoder.weight [M, d_in], encoder.bias [M], W_dec [M, d_out],
b_dec [d_in or d_out], W_skip?}. Its rule is ReLU(encoder(x - b_dec)) then TopK (no
`- b_dec` for transcoders), the same latents and values as our `topk`.

dictionary_learning (one folder per trainer): `ae.pt` (a state dict; read with
`torch.load(weights_only=True)`, never unpickled) and `config.json`
{"trainer": {dict_class, activation_dim, dict_size, k, layer, lm_name, submodule_name}}.
Classes: AutoEncoder -> relu, AutoEncoderTopK -> topk, BatchTopKSAE -> batchtopk (its
scalar threshold), JumpReluAutoEncoder -> jumprelu (no input centering), and
MatryoshkaBatchTopKSAE -> matryoshka (group_sizes -> cumulative widths). Their JumpReLU
reports codes multiplied by the decoder-row norms; we fold those norms into the weights
so our codes equal theirs and the decoder rows are unit norm.

Sites: when not given, sparsify hookpoints `layers.N` / `h.N` map to
`blocks.N.hook_resid_post` (`.mlp` -> `hook_mlp_out`, `.self_attn`/`.attn` ->
`hook_attn_out`), and dictionary_learning `submodule_name`s containing resid_post /
mlp_out / attn_out with `layer` map likewise. Anything else needs `site=`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from workbench.errors import CorruptFileError, WorkbenchError
from workbench.sae.base import SparseAutoencoder
from workbench.sae.config import SaeConfig
from workbench.sae.io import read_cfg_json, read_safetensors, sae_from_tensors

SPARSIFY_WEIGHTS = "sae.safetensors"
DICTIONARY_LEARNING_WEIGHTS = "ae.pt"


def detect_format(folder: Path) -> str:
    """"saelens" | "sparsify" | "dictionary_learning" | "sparsify_run" from the files present."""
    has_sparsify_weights = (folder / SPARSIFY_WEIGHTS).exists()
    if (folder / "sae_weights.safetensors").exists() or ((folder / "cfg.json").exists() and not has_sparsify_weights):
        return "saelens"
    if has_sparsify_weights:
        return "sparsify"
    if (folder / DICTIONARY_LEARNING_WEIGHTS).exists():
        return "dictionary_learning"
    if any((sub / SPARSIFY_WEIGHTS).exists() for sub in folder.iterdir() if sub.is_dir()):
        return "sparsify_run"
    raise WorkbenchError(
        f"{folder} holds no SAE: expected cfg.json + sae_weights.safetensors (SAELens / workbench), "
        f"cfg.json + {SPARSIFY_WEIGHTS} (sparsify) or {DICTIONARY_LEARNING_WEIGHTS} (dictionary_learning)"
    )


# ---------------------------------------------------------------------- sites
def site_from_hookpoint(hookpoint: str) -> str:
    """sparsify/HF module path -> TransformerLens site, or '' when not recognised."""
    match = re.fullmatch(r"(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?", hookpoint)
    if not match:
        return ""
    layer, sub = match.group(1), match.group(2)
    if sub is None:
        return f"blocks.{layer}.hook_resid_post"
    return f"blocks.{layer}.hook_mlp_out" if sub == "mlp" else f"blocks.{layer}.hook_attn_out"


def site_from_submodule(submodule_name: str | None, layer: Any) -> str:
    """dictionary_learning submodule_name + layer -> site, or '' when not recognised."""
    if not submodule_name or layer is None:
        return ""
    for key, hook in (("resid_post", "hook_resid_post"), ("mlp_out", "hook_mlp_out"), ("attn_out", "hook_attn_out")):
        if key in submodule_name:
            return f"blocks.{int(layer)}.{hook}"
    return ""


# ---------------------------------------------------------------------- sparsify
def import_sparsify(
    folder: str | Path, *, hookpoint: str | None = None, site: str | None = None, model_name: str = "", dtype: str | None = "float32"
) -> SparseAutoencoder:
    """Load a sparsify SAE/transcoder folder (or a run folder plus `hookpoint`)."""
    folder = Path(folder)
    if not (folder / SPARSIFY_WEIGHTS).exists():
        subs = sorted(sub.name for sub in folder.iterdir() if sub.is_dir() and (sub / SPARSIFY_WEIGHTS).exists()) if folder.is_dir() else []
        if hookpoint is None or hookpoint not in subs:
            raise WorkbenchError(
                f"{folder} is a sparsify run with hookpoints {subs or 'none'}; pass hookpoint= one of them"
            )
        folder = folder / hookpoint
    hookpoint = hookpoint or folder.name
    raw = read_cfg_json(folder / "cfg.json")
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise WorkbenchError(f"{folder}: sparsify activation {activation!r} is not supported (only topk)")
    if raw.get("skip_connection"):
        raise WorkbenchError(f"{folder}: sparsify skip connections (W_skip) are not supported")
    tensors = read_safetensors(folder / SPARSIFY_WEIGHTS)
    try:
        enc_w, enc_b, W_dec, b_dec = tensors["encoder.weight"], tensors["encoder.bias"], tensors["W_dec"], tensors["b_dec"]
    except KeyError as missing:
        raise CorruptFileError(f"{folder / SPARSIFY_WEIGHTS} lacks {missing}; not a sparsify SAE") from None
    d_sae, d_in = enc_w.shape
    if "d_in" in raw and int(raw["d_in"]) != d_in:
        raise WorkbenchError(f"{folder}: cfg.json d_in={raw['d_in']} but encoder.weight is {tuple(enc_w.shape)}")
    transcode = bool(raw.get("transcode", False))
    cfg = SaeConfig(
        architecture="topk",
        d_in=int(d_in),
        d_sae=int(d_sae),
        k=int(raw.get("k", 32)),
        transcoder=transcode,
        d_out=int(W_dec.shape[1]) if transcode else None,
        apply_b_dec_to_input=not transcode,
        model_name=model_name,
        site=site if site is not None else (site_from_hookpoint(hookpoint) or hookpoint),
        site_out=(site if site is not None else site_from_hookpoint(hookpoint)) if transcode else "",
    )
    mapped = {"W_enc": enc_w.T.contiguous(), "b_enc": enc_b, "W_dec": W_dec, "b_dec": b_dec}
    meta = {"imported_from": "sparsify", "sparsify_hookpoint": hookpoint, "sparsify_cfg": raw}
    return sae_from_tensors(cfg, mapped, source=str(folder), dtype=dtype, metadata=meta)


# ---------------------------------------------------------------------- dictionary_learning
def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or pickled-object files
        raise CorruptFileError(
            f"{path} could not be read as a plain state dict with weights_only=True ({error}); "
            "the workbench never unpickles arbitrary objects"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError(f"{path} is not a state dict of tensors")
    return {key.removeprefix("_orig_mod."): value for key, value in state.items()}


def _dictionary_class(state: dict[str, torch.Tensor], declared: str | None) -> str:
    if declared:
        return declared
    if "group_sizes" in state:
        return "MatryoshkaBatchTopKSAE"
    if "W_enc" in state and "threshold" in state:
        return "JumpReluAutoEncoder"
    if "encoder.weight" in state and "k" in state:
        return "BatchTopKSAE" if float(state.get("threshold", torch.tensor(-1.0)).reshape(-1)[0]) >= 0 else "AutoEncoderTopK"
    if "encoder.weight" in state and "bias" in state:
        return "AutoEncoder"
    raise WorkbenchError(f"cannot tell the dictionary_learning class from the keys {sorted(state)}")


def import_dictionary_learning(
    path: str | Path, *, site: str | None = None, model_name: str | None = None, dtype: str | None = "float32"
) -> SparseAutoencoder:
    """Load a dictionary_learning trainer folder (ae.pt + config.json) or an ae.pt file."""
    path = Path(path)
    weights = path / DICTIONARY_LEARNING_WEIGHTS if path.is_dir() else path
    config_path = weights.parent / "config.json"
    trainer: dict[str, Any] = {}
    if config_path.exists():
        try:
            trainer = json.loads(config_path.read_text()).get("trainer", {})
        except (json.JSONDecodeError, AttributeError) as error:
            raise CorruptFileError(f"{config_path} is not a dictionary_learning config ({error})") from None
    state = _load_state_dict(weights)
    dict_class = _dictionary_class(state, trainer.get("dict_class"))
    site = site if site is not None else site_from_submodule(trainer.get("submodule_name"), trainer.get("layer"))
    common = {"model_name": model_name if model_name is not None else str(trainer.get("lm_name") or ""), "site": site}
    meta = {"imported_from": "dictionary_learning", "dictionary_learning_trainer": trainer}

    if dict_class == "AutoEncoder":
        d_sae, d_in = state["encoder.weight"].shape
        cfg = SaeConfig("relu", int(d_in), int(d_sae), **common)
        tensors = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"],
                   "W_dec": state["decoder.weight"].T, "b_dec": state["bias"]}
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        d_sae, d_in = state["encoder.weight"].shape
        k = int(state["k"]) if "k" in state else int(trainer["k"])
        arch = "topk" if dict_class == "AutoEncoderTopK" else "batchtopk"
        cfg = SaeConfig(arch, int(d_in), int(d_sae), k=k, **common)
        tensors = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"],
                   "W_dec": state["decoder.weight"].T, "b_dec": state["b_dec"]}
        if arch == "batchtopk":
            tensors["threshold"] = state["threshold"].float().reshape(-1)[:1].expand(int(d_sae))
    elif dict_class == "JumpReluAutoEncoder":
        d_in, d_sae = state["W_enc"].shape
        norms = state["W_dec"].float().norm(dim=1).clamp_min(1e-12)
        cfg = SaeConfig("jumprelu", int(d_in), int(d_sae), apply_b_dec_to_input=False, **common)
        tensors = {"W_enc": state["W_enc"].float() * norms, "b_enc": state["b_enc"].float() * norms,
                   "W_dec": state["W_dec"].float() / norms[:, None], "b_dec": state["b_dec"],
                   "threshold": state["threshold"].float() * norms}
    elif dict_class == "MatryoshkaBatchTopKSAE":
        d_in, d_sae = state["W_enc"].shape
        widths = tuple(int(w) for w in torch.cumsum(state["group_sizes"].long(), 0).tolist())
        cfg = SaeConfig("matryoshka", int(d_in), int(d_sae), k=int(state["k"]), matryoshka_widths=widths, **common)
        tensors = {"W_enc": state["W_enc"], "b_enc": state["b_enc"], "W_dec": state["W_dec"], "b_dec": state["b_dec"],
                   "threshold": state["threshold"].float().reshape(-1)[:1].expand(int(d_sae))}
    else:
        raise WorkbenchError(
            f"dictionary_learning class {dict_class!r} is not supported; the workbench imports "
            "AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder and MatryoshkaBatchTopKSAE"
        )
    return sae_from_tensors(cfg, {k: v.contiguous() for k, v in tensors.items()}, source=str(weights), dtype=dtype, metadata=meta)
