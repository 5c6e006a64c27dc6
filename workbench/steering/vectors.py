"""Steering vectors beyond SAE features, and the unit that coefficients are measured in.

    typical_norm(model, site)                 median token norm of a site: the "norm" unit
    diff_in_means(model, site, pos, neg)      difference-in-means vector [d] (the contrastive baseline)
    random_direction(vector_or_width, ...)    random direction [d] of equal norm (the control)
    load_vector(path, width=...) / save_vector(path, vector)
                                              vectors from .safetensors / .npy files

Coefficients in "norm" units multiply the unit direction by the site's typical residual
norm, so "coef 1" means "a vector as long as a typical token's activation at that site"
on any model and layer (residual norms grow with depth, so raw coefficients do not
transfer between layers).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from workbench.errors import WorkbenchError

# Text sample for the typical norm: the first documents of the shipped default corpus.
NORM_SAMPLE_DOCS = 64
NORM_SAMPLE_TOKENS = 2048
NORM_SAMPLE_CONTEXT = 64
MAX_CONTRAST_PROMPTS = 256

_norm_cache: dict[tuple, float] = {}
_norm_lock = threading.Lock()


def typical_norm(model, site: str) -> float:
    """Median L2 norm of `site` over ~2k tokens of the default corpus (position 0 dropped).

    The median, not the mean: a few attention-sink tokens carry norms 100x the rest.
    Cached per process and (model, dtype, site).
    """
    from workbench.corpora import load_corpus, pack_corpus

    site = model.check_site(site)
    key = (model.name, str(model.dtype), str(model.device), site)
    with _norm_lock:
        if key in _norm_cache:
            return _norm_cache[key]
    corpus = load_corpus("default", max_docs=NORM_SAMPLE_DOCS)
    packed = pack_corpus(corpus, model.tokenizer, NORM_SAMPLE_CONTEXT, split="all", max_tokens=NORM_SAMPLE_TOKENS)
    capture = model.capture(packed, [site], batch_size=16, drop_bos=True)
    norm = float(capture.acts[site].float().norm(dim=-1).median())
    if not np.isfinite(norm) or norm <= 0:
        raise WorkbenchError(f"the typical norm of {site} came out as {norm}; use raw units")
    with _norm_lock:
        _norm_cache[key] = norm
    return norm


def _site_vectors(model, site: str, prompts: Sequence[str], reduce: str) -> torch.Tensor:
    """[n_prompts, d]: each prompt's activation at `site`, averaged over tokens or at the last one."""
    from workbench.engine.capture import pad_right, windows_from_texts

    windows = windows_from_texts(model, list(prompts), min(model.context_size, 512))
    if len(windows) != len(prompts):
        raise WorkbenchError("a contrast prompt is longer than 512 tokens; shorten it")
    rows = []
    for start in range(0, len(windows), 16):
        batch = windows[start:start + 16]
        ids, mask = pad_right(batch, 0)
        value = model.read_sites(ids, mask, [site])[site].float().cpu()  # [B, T, d]
        for row, window in enumerate(batch):
            length = len(window.ids)
            if reduce == "last":
                rows.append(value[row, length - 1])
            else:  # mean over real tokens, skipping position 0 (the attention sink) when there are others
                first = 1 if length > 1 else 0
                rows.append(value[row, first:length].mean(0))
    return torch.stack(rows)


def diff_in_means(model, site: str, positive: Sequence[str], negative: Sequence[str], *,
                  reduce: str = "mean") -> torch.Tensor:
    """Difference-in-means steering vector [d] = mean(positive) - mean(negative) at `site`.

    Args:
        positive / negative: prompts with and without the concept (1..MAX_CONTRAST_PROMPTS each).
        reduce: "mean" averages each prompt's tokens (position 0 excluded), "last" takes
            its last token (CAA's answer-token reading).
    Returns a float32 CPU tensor; its norm says how far apart the two sets sit.
    """
    site = model.check_site(site)
    if reduce not in ("mean", "last"):
        raise WorkbenchError(f"reduce must be 'mean' or 'last', got {reduce!r}")
    for name, prompts in (("positive", positive), ("negative", negative)):
        if isinstance(prompts, str) or not prompts:
            raise WorkbenchError(f"give a list of {name} prompts (at least one)")
        if len(prompts) > MAX_CONTRAST_PROMPTS:
            raise WorkbenchError(f"{len(prompts)} {name} prompts exceed the cap of {MAX_CONTRAST_PROMPTS}")
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise WorkbenchError(f"the {name} prompts contain an empty one")
    pos = _site_vectors(model, site, positive, reduce).mean(0)
    neg = _site_vectors(model, site, negative, reduce).mean(0)
    return pos - neg


def random_direction(like: torch.Tensor | int, *, norm: float | None = None, seed: int = 0) -> torch.Tensor:
    """A random direction [d] (Gaussian, seeded) scaled to `norm` (default: the norm of `like`).

    The control for any steering vector: same length, no meaning.
    """
    if isinstance(like, int):
        width, target = like, 1.0 if norm is None else float(norm)
    else:
        width, target = int(like.shape[-1]), float(like.float().norm()) if norm is None else float(norm)
    if width < 1:
        raise WorkbenchError(f"width must be >= 1, got {width}")
    generator = torch.Generator().manual_seed(int(seed))
    direction = torch.randn(width, generator=generator)
    return direction / direction.norm() * target


def check_vector(vector, width: int, what: str = "the vector") -> torch.Tensor:
    """A finite, non-zero 1-D float32 tensor of the given width, or a clear error."""
    tensor = torch.as_tensor(np.asarray(vector) if not isinstance(vector, torch.Tensor) else vector)
    tensor = tensor.detach().float().cpu()
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise WorkbenchError(f"{what} must be one vector [d], got shape {tuple(tensor.shape)}")
    if tensor.shape[0] != width:
        raise WorkbenchError(f"{what} has width {tensor.shape[0]} but the site has width {width}; "
                             "use a vector computed for this model and site")
    if not torch.isfinite(tensor).all():
        raise WorkbenchError(f"{what} has non-finite entries")
    if float(tensor.norm()) == 0:
        raise WorkbenchError(f"{what} is all zeros; it has no direction")
    return tensor


def load_vector(path: str | Path, *, width: int | None = None, key: str | None = None) -> torch.Tensor:
    """Read a steering vector from a .safetensors file (one tensor, or `key`) or a .npy file.

    Never unpickles (.npy is read with allow_pickle=False). With `width`, the width is checked.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path} is not a file; pass a .safetensors or .npy vector file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as error:  # a damaged or foreign file
            raise WorkbenchError(f"cannot read {path} as safetensors: {error}") from error
        if key is not None:
            if key not in tensors:
                from workbench.errors import UnknownNameError

                raise UnknownNameError(f"tensor in {path.name}", key, sorted(tensors))
            tensor = tensors[key]
        elif len(tensors) == 1:
            tensor = next(iter(tensors.values()))
        else:
            raise WorkbenchError(f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); pass key=")
    elif suffix == ".npy":
        try:
            tensor = torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as error:
            raise WorkbenchError(f"cannot read {path} as a plain .npy array: {error}") from error
    else:
        raise WorkbenchError(f"{path.name}: vector files must end in .safetensors or .npy")
    if width is None:
        width = int(tensor.shape[-1]) if tensor.dim() else 0
    return check_vector(tensor, width, what=f"the vector in {path.name}")


def save_vector(path: str | Path, vector: torch.Tensor, *, metadata: dict[str, str] | None = None) -> Path:
    """Write a vector [d] to a .safetensors file (atomically) under the key "vector"."""
    from workbench.atomic import save_safetensors

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise WorkbenchError(f"{path.name}: save vectors as .safetensors")
    vector = torch.as_tensor(vector).detach().float().cpu()
    save_safetensors(path, {"vector": vector.reshape(-1)}, metadata=metadata)
    return path
