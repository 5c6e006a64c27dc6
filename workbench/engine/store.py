"""ActivationStore: captured activations on disk as safetensors shards + a manifest.

Layout of a store folder:

    manifest.json                 what was captured and which shards are complete
    shard-00000.safetensors       one tensor per site [n, width] + doc, pos, token [n]
    shard-00001.safetensors       ...

Every shard and every manifest update is written atomically (temp file + rename),
and the manifest lists a shard only after the shard is on disk, so an interrupted
capture leaves a valid prefix. Running the same capture again resumes after the
last complete shard and ends with the same store as an uninterrupted run (shard
boundaries fall on batch boundaries, which are the same in both runs).

Reading streams shuffled batches: shards are visited in a seeded random order, a few
at a time, their rows mixed together with the rows left over from the previous
group, permuted, and cut into batches, so one epoch yields every row exactly once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from workbench import atomic
from workbench import sites as site_grammar
from workbench.errors import CorruptFileError, WorkbenchError

FORMAT = "workbench-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
PROVENANCE_KEYS = ("doc", "pos", "token")
_STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CaptureConfig:
    """What a store was (or will be) captured from; a resumed capture must match it exactly."""

    model: str
    """Model name as given to load_model."""
    sites: tuple[str, ...]
    """Sites stored, in forward order."""
    corpus: str
    """Corpus name or path."""
    split: str
    """Corpus split: train, test or all."""
    context_size: int
    """Tokens per packed context."""
    max_tokens: int
    """Rows to store (per site)."""
    drop_bos: bool
    """Whether position 0 of every context was dropped."""
    batch_size: int
    """Contexts per forward; shard boundaries fall on batch boundaries."""
    dtype: str
    """Storage dtype of the activations."""

    def __post_init__(self):
        if self.max_tokens < 1:
            raise WorkbenchError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.context_size < 2:
            raise WorkbenchError(f"context_size must be >= 2, got {self.context_size}")
        if self.batch_size < 1:
            raise WorkbenchError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in _STORE_DTYPES:
            raise WorkbenchError(f"store dtype {self.dtype!r} is not one of {sorted(_STORE_DTYPES)}")
        if not self.sites:
            raise WorkbenchError("a store needs at least one site")

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "sites": list(self.sites)}


class ActivationStore:
    """Read access to a captured store (see the module docstring for the layout)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str | Path, *, require_complete: bool = True) -> "ActivationStore":
        """Open a store; raises CorruptFileError naming the file when anything is damaged."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest is None:
            raise WorkbenchError(f"{folder} is not an activation store (no {MANIFEST}); create one with "
                                 "`workbench capture`")
        store = cls(folder, manifest)
        if require_complete and not manifest.get("complete"):
            raise WorkbenchError(
                f"the store in {folder} is incomplete ({manifest['n_tokens']} of {manifest['config']['max_tokens']} "
                "tokens); run the same capture command again to resume it"
            )
        for shard in manifest["shards"]:
            if not (folder / shard["file"]).is_file():
                raise CorruptFileError(f"{folder / shard['file']} is listed in the manifest but missing")
        return store

    # ------------------------------------------------------------------ facts
    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def model_name(self) -> str:
        return self.config["model"]

    @property
    def sites(self) -> list[str]:
        return list(self.config["sites"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def context_size(self) -> int:
        return int(self.config["context_size"])

    @property
    def dtype(self) -> torch.dtype:
        return _STORE_DTYPES[self.config["dtype"]]

    def width(self, site: str) -> int:
        self._check(site)
        return int(self.manifest["widths"][site])

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.folder)!r}, model={self.model_name}, sites={self.sites}, tokens={self.n_tokens})"

    # ------------------------------------------------------------------ reading
    def _check(self, site: str) -> None:
        if site not in self.manifest["widths"]:
            from workbench.errors import UnknownNameError

            raise UnknownNameError("site in this store", site, self.sites)

    def load_shard(self, index: int, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """Load some tensors of one shard, checking them against the manifest."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        shard = self.manifest["shards"][index]
        path = self.folder / shard["file"]
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensors = {key: handle.get_tensor(key) for key in keys}
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
            raise CorruptFileError(f"cannot read shard {path}: {error}; recapture with --overwrite") from error
        for key, tensor in tensors.items():
            if tensor.shape[0] != shard["n_tokens"]:
                raise CorruptFileError(
                    f"shard {path} holds {tensor.shape[0]} rows of {key}, the manifest says {shard['n_tokens']}"
                )
        return tensors

    def read(self, site: str) -> torch.Tensor:
        """All rows of one site, in capture order: [n_tokens, width]."""
        self._check(site)
        parts = [self.load_shard(i, [site])[site] for i in range(len(self.manifest["shards"]))]
        return torch.cat(parts) if parts else torch.empty(0, self.width(site), dtype=self.dtype)

    def provenance(self) -> dict[str, torch.Tensor]:
        """doc, pos and token id of every row, in capture order: each [n_tokens]."""
        parts = [self.load_shard(i, PROVENANCE_KEYS) for i in range(len(self.manifest["shards"]))]
        return {key: torch.cat([p[key] for p in parts]).long() for key in PROVENANCE_KEYS}

    def iter_batches(self, site: str, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                     device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                     drop_last: bool = False, shards_in_memory: int = 4) -> Iterator[torch.Tensor]:
        """Stream one epoch of [batch_size, width] batches; every row appears exactly once.

        With shuffle, shards are visited in a seeded random order, `shards_in_memory`
        at a time, and rows are permuted across the shards in memory (plus the rows
        left over from the previous group). The last batch is smaller unless drop_last.
        """
        self._check(site)
        if batch_size < 1:
            raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        order = list(range(len(self.manifest["shards"])))
        if shuffle:
            order = torch.randperm(len(order), generator=generator).tolist()
        leftover = torch.empty(0, self.width(site), dtype=self.dtype)
        for start in range(0, len(order), max(1, shards_in_memory)):
            group = [self.load_shard(i, [site])[site] for i in order[start:start + shards_in_memory]]
            rows = torch.cat([leftover, *group])
            if shuffle:
                rows = rows[torch.randperm(rows.shape[0], generator=generator)]
            full = rows.shape[0] // batch_size * batch_size
            for offset in range(0, full, batch_size):
                yield _to(rows[offset:offset + batch_size], device, dtype)
            leftover = rows[full:]
        if leftover.shape[0] and not drop_last:
            yield _to(leftover, device, dtype)


def _to(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    if device is None and dtype is None:
        return tensor
    return tensor.to(device=device or tensor.device, dtype=dtype or tensor.dtype)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The parsed manifest of a store folder, None when there is none; CorruptFileError when damaged."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); recapture with --overwrite") from error
    required = {"format", "version", "config", "widths", "shards", "n_tokens", "complete"}
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not required <= set(manifest):
        raise CorruptFileError(f"{path} is not a workbench activation-store manifest (fields missing)")
    if manifest["version"] != VERSION:
        raise CorruptFileError(f"{path} has store version {manifest['version']}; this workbench reads {VERSION}")
    return manifest


# ---------------------------------------------------------------------- writing
def capture_to_store(model, corpus, sites: Sequence[str], out_dir: str | Path, *, max_tokens: int,
                     context_size: int = 128, batch_size: int = 8, drop_bos: bool = True,
                     split: str = "train", dtype: str | None = None, overwrite: bool = False,
                     shard_tokens: int = 65536, progress: bool = True) -> ActivationStore:
    """Capture sites over a corpus into a store folder; resumes an interrupted capture.

    Args:
        model: a loaded workbench Model.
        corpus: a corpus name/path or a workbench.corpora.Corpus.
        sites: vector sites to store (attention patterns are refused: use capture()).
        out_dir: the store folder. An existing complete store is refused unless
            overwrite; an incomplete one with the same settings is resumed.
        max_tokens: rows to store.
        shard_tokens: rows per shard, rounded up to whole batches.
    Returns the opened, complete store.
    """
    import shutil

    from tqdm.auto import tqdm

    from workbench.corpora import load_corpus, pack_corpus
    from workbench.engine.capture import capture_batch, windows_from_packed

    corpus_obj = load_corpus(corpus) if isinstance(corpus, str) else corpus
    sites = model.ordered(sites)
    for site in sites:
        if site_grammar.parse_site(site).is_pattern:
            raise WorkbenchError(f"{site} holds attention patterns, which a store does not keep; use capture()")
    dtype = dtype or str(model.dtype).replace("torch.", "")
    config = CaptureConfig(model=model.name, sites=tuple(sites), corpus=corpus_obj.name, split=split,
                           context_size=context_size, max_tokens=max_tokens, drop_bos=drop_bos,
                           batch_size=batch_size, dtype=dtype)
    folder = Path(out_dir)
    manifest = _prepare_folder(folder, config, overwrite, shutil)

    per_context = context_size - (1 if drop_bos else 0)
    n_contexts = math.ceil(max_tokens / per_context)
    packed = pack_corpus(corpus_obj, model.tokenizer, context_size, split=split,
                         max_tokens=n_contexts * context_size)
    if len(packed) == 0:
        raise WorkbenchError(f"corpus {corpus_obj.name!r} ({split}) is too short for one context of {context_size}")
    windows = list(windows_from_packed(packed))
    storage = _STORE_DTYPES[dtype]
    buffer: list = []
    buffered = 0
    contexts_done = manifest["contexts_done"]
    bar = tqdm(total=max_tokens, initial=manifest["n_tokens"], unit="tok", desc=f"capture -> {folder.name}",
               disable=not progress)
    started = time.perf_counter()
    while contexts_done < len(windows) and manifest["n_tokens"] + buffered < max_tokens:
        batch = windows[contexts_done:contexts_done + batch_size]
        part = capture_batch(model, batch, sites, drop_bos=drop_bos)
        room = max_tokens - manifest["n_tokens"] - buffered
        rows = min(len(part), room)
        buffer.append({**{s: part.acts[s][:rows].to(storage) for s in sites},
                       "doc": part.doc[:rows].int(), "pos": part.pos[:rows].int(), "token": part.token[:rows].int()})
        buffered += rows
        contexts_done += len(batch)
        bar.update(rows)
        if buffered >= shard_tokens:
            _flush(folder, manifest, buffer, contexts_done)
            buffer, buffered = [], 0
    if buffer:
        _flush(folder, manifest, buffer, contexts_done)
    manifest["complete"] = True
    manifest["seconds"] = round(manifest.get("seconds", 0.0) + time.perf_counter() - started, 3)
    if manifest["n_tokens"] < max_tokens:
        manifest["note"] = f"the corpus ran out after {manifest['n_tokens']} of {max_tokens} tokens"
    atomic.write_json(folder / MANIFEST, manifest)
    bar.close()
    return ActivationStore.open(folder)


def _prepare_folder(folder: Path, config: CaptureConfig, overwrite: bool, shutil) -> dict[str, Any]:
    """Return the manifest to continue from: fresh, or the resumable one on disk."""
    existing = None
    if folder.exists() and any(folder.iterdir()):
        if overwrite:
            shutil.rmtree(folder)
        else:
            existing = read_manifest(folder)
            if existing is None:
                raise WorkbenchError(f"{folder} exists and is not an activation store; pass --overwrite or choose "
                                     "another --out")
            if existing["complete"]:
                raise WorkbenchError(f"a complete store already exists in {folder}; pass --overwrite to replace it")
            if existing["config"] != config.as_dict():
                raise WorkbenchError(
                    f"{folder} holds an interrupted capture with other settings ({existing['config']}); "
                    "pass --overwrite to start again"
                )
    if existing is not None:
        # Drop shards a crash left behind but the manifest never listed.
        listed = {shard["file"] for shard in existing["shards"]}
        for path in folder.glob("shard-*.safetensors"):
            if path.name not in listed:
                path.unlink()
        return existing
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.as_dict(),
        "widths": {},
        "shards": [],
        "n_tokens": 0,
        "contexts_done": 0,
        "complete": False,
        "provenance": list(PROVENANCE_KEYS),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic.write_json(folder / MANIFEST, manifest)
    return manifest


def _flush(folder: Path, manifest: dict[str, Any], buffer: list[dict], contexts_done: int) -> None:
    """Write the buffered rows as the next shard, then record it in the manifest."""
    tensors = {key: torch.cat([b[key] for b in buffer]) for key in buffer[0]}
    index = len(manifest["shards"])
    name = f"shard-{index:05d}.safetensors"
    atomic.save_safetensors(folder / name, tensors)
    rows = int(tensors["token"].shape[0])
    for key, tensor in tensors.items():
        if key not in PROVENANCE_KEYS:
            manifest["widths"][key] = int(tensor.shape[1])
    manifest["shards"].append({"file": name, "n_tokens": rows, "contexts_end": contexts_done})
    manifest["n_tokens"] += rows
    manifest["contexts_done"] = contexts_done
    atomic.write_json(folder / MANIFEST, manifest)
