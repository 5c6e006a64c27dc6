"""Activation capture: several sites in one forward pass per batch, with provenance.

Inputs are a text, a list of texts (documents), or a packed corpus. Texts longer
than the context are split into consecutive windows (never truncated). Batches are
padded on the right, so real tokens never attend to padding in causal models and
positions need no correction; padding is dropped from the result, and position 0
of each context (the BOS or attention-sink token) too when `drop_bos` is set.

Every captured row carries its provenance: the document index, the token's
position inside that document, and the token id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from workbench import sites as site_grammar
from workbench.errors import WorkbenchError

# Caps that keep interactive use safe; library callers can capture more in batches.
MAX_TEXTS = 100_000


@dataclass
class Capture:
    """Captured activations, one row per kept token.

    acts: site -> [N, width] (attention patterns: [N, heads, keys], keys padded to the
        longest window of the capture).
    doc: [N] document index (-1 for a BOS token inserted by packing).
    pos: [N] position of the token within its document.
    token: [N] token id.
    """

    acts: dict[str, torch.Tensor]
    doc: torch.Tensor
    pos: torch.Tensor
    token: torch.Tensor
    sites: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.token.shape[0])

    @staticmethod
    def concat(parts: Sequence["Capture"]) -> "Capture":
        """Join captures row-wise (same sites)."""
        if not parts:
            raise WorkbenchError("nothing was captured")
        sites = parts[0].sites
        acts = {}
        for site in sites:
            tensors = [p.acts[site] for p in parts]
            if tensors[0].dim() == 3:  # patterns: pad the key axis to a common length
                keys = max(t.shape[-1] for t in tensors)
                tensors = [torch.nn.functional.pad(t, (0, keys - t.shape[-1])) for t in tensors]
            acts[site] = torch.cat(tensors)
        return Capture(
            acts=acts,
            doc=torch.cat([p.doc for p in parts]),
            pos=torch.cat([p.pos for p in parts]),
            token=torch.cat([p.token for p in parts]),
            sites=list(sites),
        )


@dataclass(frozen=True)
class Window:
    """One context fed to the model: token ids with each token's doc and position."""

    ids: list[int]
    doc: list[int]
    pos: list[int]


def windows_from_texts(model, texts: Sequence[str], context_size: int) -> list[Window]:
    """Tokenise user texts and split long ones into context-sized windows."""
    from workbench.corpora import split_documents

    if len(texts) > MAX_TEXTS:
        raise WorkbenchError(f"{len(texts)} texts exceed the cap of {MAX_TEXTS}; capture in several calls")
    chunks = split_documents(list(texts), model.tokenizer, context_size)
    return [
        Window(ids=list(ids), doc=[doc] * len(ids), pos=list(range(start, start + len(ids))))
        for doc, start, ids in chunks
    ]


def windows_from_packed(packed) -> Iterator[Window]:
    """Windows of a PackedCorpus (already context-sized)."""
    for row in range(len(packed)):
        yield Window(
            ids=packed.tokens[row].tolist(), doc=packed.doc[row].tolist(), pos=packed.pos[row].tolist()
        )


def pad_right(windows: Sequence[Window], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack windows into input_ids and attention_mask [B, T_max], padding on the right."""
    length = max(len(w.ids) for w in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window.ids)] = torch.tensor(window.ids)
        mask[row, : len(window.ids)] = 1
    return ids, mask


def _batches(windows: Iterable[Window], batch_size: int) -> Iterator[list[Window]]:
    batch: list[Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def capture_batch(model, windows: Sequence[Window], sites: Sequence[str], *, drop_bos: bool = False,
                  out_device: str | torch.device = "cpu") -> Capture:
    """Run one batch of windows and keep the real (non-padding) tokens."""
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids, mask = pad_right(windows, pad_id)
    values = model.read_sites(ids, mask, sites)
    keep = mask.bool()
    if drop_bos:
        keep[:, 0] = False
    flat_keep = keep.reshape(-1)
    acts = {}
    for site in sites:
        value = values[site]
        if site_grammar.parse_site(site).is_pattern:
            # [B, H, T, T] -> one row per query token: [B*T, H, T]
            value = value.permute(0, 2, 1, 3).reshape(-1, value.shape[1], value.shape[-1])
        else:
            value = value.reshape(-1, value.shape[-1])
        acts[site] = value[flat_keep.to(value.device)].to(out_device)
    doc = torch.tensor([d for w in windows for d in w.doc + [-1] * (ids.shape[1] - len(w.ids))])
    pos = torch.tensor([p for w in windows for p in w.pos + [-1] * (ids.shape[1] - len(w.ids))])
    return Capture(acts=acts, doc=doc[flat_keep], pos=pos[flat_keep], token=ids.reshape(-1)[flat_keep],
                   sites=list(sites))


def _validate(model, sites) -> list[str]:
    if isinstance(sites, str):
        sites = [sites]
    if not sites:
        raise WorkbenchError(f"no sites given; choose from `workbench sites {model.name}`")
    return model.ordered(sites)


def iter_capture(model, inputs, sites, *, batch_size: int = 8, context_size: int | None = None,
                 drop_bos: bool = False, progress: bool = False,
                 out_device: str | torch.device = "cpu") -> Iterator[Capture]:
    """Yield one Capture per batch of windows (streaming; for training and harvest).

    Args:
        inputs: a str, a list of str, or a workbench.corpora.PackedCorpus.
        sites: site names; read in one forward per batch.
        batch_size: contexts per forward.
        context_size: window length for texts (default: the model's context, capped at 1024).
        drop_bos: drop position 0 of every context.
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    sites = _validate(model, sites)
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)):
        context = context_size or min(model.context_size, 1024)
        windows: Sequence[Window] = windows_from_texts(model, inputs, context)
        total = len(windows)
    elif hasattr(inputs, "tokens") and hasattr(inputs, "doc"):
        if inputs.context_size > model.context_size:
            raise WorkbenchError(
                f"the corpus is packed to {inputs.context_size} tokens but {model.name} takes at most "
                f"{model.context_size}; pack it to a shorter context"
            )
        windows = windows_from_packed(inputs)
        total = len(inputs)
    else:
        raise WorkbenchError(
            f"cannot capture from {type(inputs).__name__}; expected a text, a list of texts or a PackedCorpus"
        )
    bar = tqdm(total=total, unit="ctx", desc=f"capture {model.name}", disable=not progress)
    for batch in _batches(windows, batch_size):
        yield capture_batch(model, batch, sites, drop_bos=drop_bos, out_device=out_device)
        bar.update(len(batch))
    bar.close()


def capture(model, inputs, sites, *, batch_size: int = 8, context_size: int | None = None,
            max_tokens: int | None = None, drop_bos: bool = False, progress: bool = False,
            out_device: str | torch.device = "cpu") -> Capture:
    """Capture several sites over texts or a packed corpus; returns one Capture.

    Stops once `max_tokens` rows are kept (the last batch is trimmed to exactly that).
    """
    if max_tokens is not None and max_tokens < 1:
        raise WorkbenchError(f"max_tokens must be >= 1, got {max_tokens}")
    parts: list[Capture] = []
    kept = 0
    for part in iter_capture(model, inputs, sites, batch_size=batch_size, context_size=context_size,
                             drop_bos=drop_bos, progress=progress, out_device=out_device):
        if max_tokens is not None and kept + len(part) >= max_tokens:
            parts.append(_head(part, max_tokens - kept))
            kept = max_tokens
            break
        parts.append(part)
        kept += len(part)
    return Capture.concat(parts)


def _head(part: Capture, n: int) -> Capture:
    return Capture(acts={s: v[:n] for s, v in part.acts.items()}, doc=part.doc[:n], pos=part.pos[:n],
                   token=part.token[:n], sites=part.sites)
