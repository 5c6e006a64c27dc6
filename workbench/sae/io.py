"""Save and load dictionaries in the SAELens v6 layout, so SAELens loads ours and we load theirs.

A folder holds `cfg.json` and `sae_weights.safetensors` with SAELens' tensor names:
W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out], plus `threshold`
[d_sae] for the JumpReLU family. `cfg.json` carries SAELens' v6 fields (architecture,
d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations,
reshape_activations, the architecture's own fields, metadata{model_name, hook_name,
context_size, seqpos_slice, ...}); our full `SaeConfig` rides in `metadata.workbench`,
which SAELens keeps as free-form metadata.

Architecture mapping (ours -> the `architecture` SAELens reads):

    relu               standard            (transcoder: transcoder, with d_out)
    topk               topk                k; rescale_acts_by_decoder_norm=false
    hierarchical_topk  topk                k = the largest budget; budgets in metadata
    batchtopk          jumprelu            threshold = the learned theta for every latent
    matryoshka         jumprelu            same (BatchTopK inference), widths in metadata
    jumprelu           jumprelu            (transcoder: jumprelu_transcoder)
    mp                 matching_pursuit    tied: W_dec and b_dec only; residual_threshold
    abstopk            abstopk             no SAELens class: SAELens refuses the folder
    topk transcoders   topk_transcoder     no SAELens class (same for abstopk/batchtopk...)

Writing our own name where SAELens has no equivalent makes SAELens fail loudly instead
of silently running a different rule (the TopK-loaded-as-ReLU mis-load, SAELens#553).
Activation normalisation used in training is folded into the weights before saving, so
`normalize_activations` is always "none" in our files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from workbench.atomic import save_safetensors, write_json
from workbench.errors import CorruptFileError, WorkbenchError
from workbench.sae.base import TORCH_DTYPES, SparseAutoencoder
from workbench.sae.config import SaeConfig
from workbench.sae.registry import create_sae

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
WORKBENCH_FORMAT_VERSION = 1

# SAELens v6 top-level cfg.json keys we understand: the inference fields of every
# architecture, plus the training-config fields SAELens writes into checkpoints.
SAELENS_KEYS = frozenset({
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
    "normalize_activations", "reshape_activations", "metadata",
    "k", "rescale_acts_by_decoder_norm", "residual_threshold", "d_out",
    # training-config fields (TrainingSAEConfig subclasses)
    "decoder_init_norm", "l1_coefficient", "lp_norm", "l1_warm_up_steps",
    "aux_loss_coefficient", "use_sparse_activations", "topk_threshold_lr",
    "jumprelu_init_threshold", "jumprelu_bandwidth", "jumprelu_sparsity_loss_mode",
    "l0_coefficient", "l0_warm_up_steps", "pre_act_loss_coefficient", "jumprelu_tanh_scale",
    "matryoshka_widths",
})

# SAELens architecture -> (our architecture, transcoder?) for folders SAELens wrote.
FROM_SAELENS = {
    "standard": ("relu", False),
    "topk": ("topk", False),
    "jumprelu": ("jumprelu", False),
    "matching_pursuit": ("mp", False),
    "transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", True),
}


def saelens_architecture(cfg: SaeConfig) -> str:
    """The `architecture` string written for cfg (see the module table)."""
    arch = cfg.architecture
    if cfg.transcoder:
        return {"relu": "transcoder", "jumprelu": "jumprelu_transcoder"}.get(arch, f"{arch}_transcoder")
    return {
        "relu": "standard",
        "topk": "topk",
        "hierarchical_topk": "topk",
        "batchtopk": "jumprelu",
        "matryoshka": "jumprelu",
        "jumprelu": "jumprelu",
        "mp": "matching_pursuit",
    }.get(arch, arch)


def saelens_tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """The weight tensors under SAELens' names for this dictionary."""
    cfg = sae.cfg
    tensors = {"W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}
    if cfg.architecture != "mp":
        tensors["W_enc"] = sae.W_enc.detach()
        tensors["b_enc"] = sae.b_enc.detach()
    if cfg.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold.detach()
    elif cfg.architecture in ("batchtopk", "matryoshka"):
        tensors["threshold"] = sae.threshold.detach().to(sae.W_dec.dtype).expand(cfg.d_sae).clone()
    return tensors


def saelens_cfg(cfg: SaeConfig, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """cfg.json content for cfg: SAELens v6 fields + metadata (ours under metadata.workbench)."""
    out: dict[str, Any] = {
        "architecture": saelens_architecture(cfg),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.architecture in ("topk", "hierarchical_topk", "abstopk"):
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    if cfg.architecture == "mp":
        out["residual_threshold"] = cfg.mp_residual_threshold
    if cfg.transcoder:
        out["d_out"] = cfg.d_out
    meta = {
        "model_name": cfg.model_name,
        "hook_name": cfg.site,
        "hook_head_index": None,
        "context_size": cfg.context_size,
        "prepend_bos": False,
        "seqpos_slice": [1, None] if cfg.exclude_position0 else [None],
        "dataset_path": cfg.dataset,
        "model_from_pretrained_kwargs": {},
        "workbench_architecture": cfg.architecture,
        "workbench_format_version": WORKBENCH_FORMAT_VERSION,
        "workbench": cfg.to_dict(),
    }
    if cfg.transcoder:
        meta["hook_name_out"] = cfg.site_out
    meta.update(metadata or {})
    out["metadata"] = meta
    return out


def save_sae(
    sae: SparseAutoencoder, folder: str | Path, *, dtype: str | None = None, metadata: dict[str, Any] | None = None
) -> Path:
    """Write `sae` to `folder` (created) in the SAELens v6 layout, atomically per file.

    dtype: store the weights as this dtype ("float16" for shipped files); default the SAE's.
    metadata: extra entries for cfg.json's metadata (training summary, eval results, ...).
    The weights file is written first, the config last, so a folder with a config is whole.
    """
    folder = Path(folder)
    if dtype is not None and dtype not in TORCH_DTYPES:
        raise WorkbenchError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
    target_dtype = dtype or sae.cfg.dtype
    tensors = {name: t.to("cpu", TORCH_DTYPES[target_dtype]) for name, t in saelens_tensors(sae).items()}
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise WorkbenchError(
                f"{name} has non-finite values after conversion to {target_dtype}; "
                "save in float32 or check the training run"
            )
    cfg_dict = saelens_cfg(sae.cfg.replace(dtype=target_dtype), {**getattr(sae, "metadata", {}), **(metadata or {})})
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / WEIGHTS_FILENAME, tensors, metadata={"format": "pt"})
    write_json(folder / CFG_FILENAME, cfg_dict)
    return folder


# ---------------------------------------------------------------------- loading
def read_cfg_json(path: Path) -> dict[str, Any]:
    """Parse a cfg.json, raising CorruptFileError with the file name on bad JSON."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkbenchError(f"no {path.name} in {path.parent}: not an SAE folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); re-save or re-download it") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file on CPU; truncated or foreign files raise
    CorruptFileError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise WorkbenchError(f"{path} is missing: an SAE folder needs {WEIGHTS_FILENAME} beside cfg.json")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CorruptFileError(
            f"{path} is truncated or not a safetensors file ({error}); re-download or re-save it"
        ) from None


def config_from_saelens(data: dict[str, Any], source: str) -> SaeConfig:
    """Our SaeConfig for a SAELens cfg.json dict (strict about keys)."""
    unknown = sorted(set(data) - SAELENS_KEYS)
    if unknown:
        raise WorkbenchError(
            f"{source}: unknown cfg.json keys {unknown}; a SAELens v6 config has only "
            f"{sorted(SAELENS_KEYS)}. Pre-6.0 SAELens configs (hook_point, activation_fn_str) "
            "must be converted by SAELens first."
        )
    missing = [key for key in ("architecture", "d_in", "d_sae") if key not in data]
    if missing:
        raise WorkbenchError(f"{source}: cfg.json is missing the required keys {missing}")
    meta = data.get("metadata") or {}
    if not isinstance(meta, dict):
        raise WorkbenchError(f"{source}: cfg.json 'metadata' must be an object")
    normalize = data.get("normalize_activations", "none")
    if normalize not in ("none", "expected_average_only_in"):
        raise WorkbenchError(
            f"{source}: normalize_activations={normalize!r} rescales inputs at run time, which "
            "the workbench does not do; fold it into the weights with SAELens and save again"
        )
    if normalize == "expected_average_only_in":
        warnings.warn(
            f"{source}: normalize_activations='expected_average_only_in' but the folder has no "
            "scaling factor; the SAE will see raw activations (load it with a model to check FVU)",
            stacklevel=3,
        )
    if "workbench" in meta:
        cfg = SaeConfig.from_dict(meta["workbench"], source=f"{source} (metadata.workbench)")
        for key in ("d_in", "d_sae"):
            if data[key] != getattr(cfg, key):
                raise WorkbenchError(f"{source}: {key}={data[key]} disagrees with metadata.workbench ({getattr(cfg, key)})")
        return cfg
    arch_name = data["architecture"]
    if arch_name not in FROM_SAELENS:
        raise WorkbenchError(
            f"{source}: SAELens architecture {arch_name!r} is not supported; the workbench "
            f"loads {sorted(FROM_SAELENS)} (gated, skip and temporal variants are not implemented)"
        )
    ours, transcoder = FROM_SAELENS[arch_name]
    seqpos = meta.get("seqpos_slice") or [None]
    return SaeConfig(
        architecture=ours,
        d_in=int(data["d_in"]),
        d_sae=int(data["d_sae"]),
        # SAELens' MP has no step count (it runs to convergence): take min(d_in, 256) steps.
        k=int(data["k"]) if ours == "topk" else (int(min(data["d_in"], data["d_sae"], 256)) if ours == "mp" else None),
        transcoder=transcoder,
        d_out=int(data["d_out"]) if transcoder else None,
        apply_b_dec_to_input=bool(data.get("apply_b_dec_to_input", not transcoder)),
        mp_residual_threshold=float(data.get("residual_threshold", 0.0) or 0.0),
        dtype=str(data.get("dtype", "float32")).replace("torch.", ""),
        model_name=str(meta.get("model_name") or ""),
        site=str(meta.get("hook_name") or ""),
        site_out=str(meta.get("hook_name_out") or "") if transcoder else "",
        context_size=meta.get("context_size"),
        exclude_position0=bool(seqpos and seqpos[0] not in (None, 0)),
        dataset=str(meta.get("dataset_path") or ""),
    )


def expected_tensor_shapes(cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape a folder for cfg must contain."""
    shapes: dict[str, tuple[int, ...]] = {"W_dec": (cfg.d_sae, cfg.d_out), "b_dec": (cfg.d_out,)}
    if cfg.architecture != "mp":
        shapes.update({"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,)})
    if cfg.architecture in ("jumprelu", "batchtopk", "matryoshka"):
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


def sae_from_tensors(
    cfg: SaeConfig,
    tensors: dict[str, torch.Tensor],
    *,
    source: str,
    dtype: str | None = "float32",
    device: torch.device | str | None = None,
    metadata: dict[str, Any] | None = None,
) -> SparseAutoencoder:
    """Build a dictionary from SAELens-named tensors, checking names and shapes."""
    if "log_threshold" in tensors and "threshold" not in tensors:  # SAELens < 6.48 checkpoints
        tensors = dict(tensors)
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    expected = expected_tensor_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise WorkbenchError(
            f"{source}: the weights do not match a {cfg.architecture} SAE: missing {missing}, "
            f"unexpected {extra}; expected exactly {sorted(expected)}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise WorkbenchError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                f"from the config (d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.d_out})"
            )
    file_dtype = str(tensors["W_dec"].dtype).replace("torch.", "")
    cfg = cfg.replace(dtype=dtype or (file_dtype if file_dtype in TORCH_DTYPES else "float32"))
    sae = create_sae(cfg, device=device, seed=None)
    target = TORCH_DTYPES[cfg.dtype]
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            if name in tensors:
                getattr(sae, name).copy_(tensors[name].to(target))
        if cfg.architecture == "jumprelu":
            sae.threshold.copy_(tensors["threshold"].to(target))
        elif cfg.architecture in ("batchtopk", "matryoshka"):
            theta = tensors["threshold"].float()
            if theta.numel() and float(theta.max() - theta.min()) > 1e-3 * max(1.0, float(theta.abs().max())):
                warnings.warn(f"{source}: {cfg.architecture} thresholds differ across latents; using their mean", stacklevel=3)
            sae.threshold.fill_(float(theta.mean()))
            sae.threshold_updates.fill_(1 if float(theta.mean()) >= 0 else 0)
    sae.metadata = dict(metadata or {})
    return sae.eval()


def read_sae_folder(
    folder: str | Path, *, dtype: str | None = "float32", device: torch.device | str | None = None
) -> SparseAutoencoder:
    """Load a SAELens-layout folder (ours or SAELens') into a dictionary in eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkbenchError(f"{folder} is not a folder; an SAE is a folder with {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    data = read_cfg_json(folder / CFG_FILENAME)
    cfg = config_from_saelens(data, str(folder / CFG_FILENAME))
    tensors = read_safetensors(folder / WEIGHTS_FILENAME)
    meta = {k: v for k, v in (data.get("metadata") or {}).items() if k != "workbench"}
    return sae_from_tensors(cfg, tensors, source=str(folder), dtype=dtype, device=device, metadata=meta)
