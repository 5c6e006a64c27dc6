"""Tokenise a corpus and pack it into fixed-size contexts with provenance; chunk raw texts.

`pack_corpus` turns the documents of one split into a [n_ctx, context_size] token
matrix for capture and training. Each document is tokenised without special tokens
and followed by the tokenizer's end-of-sequence token; documents are concatenated in
order and cut into consecutive windows, so a window may span a document boundary.
Beside the tokens it keeps, for every token, the index of its document and its position
inside that document: feature dashboards use them to show where an activation came from.

`split_documents` is for raw user texts (prompts, pasted text): it tokenises each text
with the tokenizer's usual special tokens and chunks texts longer than the context into
consecutive windows, so nothing is silently truncated.

Tokenisation goes through the fast tokenizer's Rust backend in batches (parallel,
no "sequence longer than the maximum" warnings); a slow tokenizer falls back to its
Python `__call__`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from workbench.corpora.corpus import Corpus, check_split
from workbench.errors import WorkbenchError

ENCODE_BATCH_DOCS = 256
"""Documents per tokenizer call: large enough to keep the Rust thread pool busy, small
enough that `max_tokens` stops tokenising soon after it has enough."""

_PROGRESS_MIN_DOCS = 2000  # below this, tokenising takes well under a second: no bar


@dataclass(frozen=True, eq=False)
class PackedCorpus:
    """A split of a corpus tokenised into consecutive windows of `context_size` tokens.

    `doc[i, j]` is the index (in `Corpus.docs`) of the document token `tokens[i, j]`
    came from and `pos[i, j]` its position among that document's tokens (the appended
    end-of-sequence token has position len(document tokens)); both are -1 for a BOS
    inserted by `prepend_bos`.
    """

    tokens: torch.Tensor
    """[n_ctx, context_size] int64 token ids."""
    doc: torch.Tensor
    """[n_ctx, context_size] int64 document index of each token (-1: inserted BOS)."""
    pos: torch.Tensor
    """[n_ctx, context_size] int64 position of each token within its document (-1: inserted BOS)."""
    corpus: str
    """Name of the corpus the windows come from."""
    split: str
    """"train", "test" or "all"."""
    context_size: int
    """Tokens per window."""

    def __post_init__(self) -> None:
        shape = (self.tokens.shape[0], self.context_size)
        for name in ("tokens", "doc", "pos"):
            tensor = getattr(self, name)
            assert tensor.dtype == torch.long and tuple(tensor.shape) == shape, (
                f"PackedCorpus.{name}: expected int64 {shape}, got {tensor.dtype} {tuple(tensor.shape)}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __repr__(self) -> str:
        return (f"PackedCorpus(corpus={self.corpus!r}, split={self.split!r}, n_ctx={len(self)}, "
                f"context_size={self.context_size})")


def pack_corpus(
    corpus: Corpus,
    tokenizer: Any,
    context_size: int,
    split: str = "train",
    max_tokens: int | None = None,
    prepend_bos: bool = False,
) -> PackedCorpus:
    """Tokenise the documents of `split` and cut the stream into windows of `context_size`.

    Each document is tokenised without special tokens and followed by the tokenizer's
    EOS (BERT-style tokenizers without an EOS: [SEP]; none if neither exists). The last
    partial window is dropped. With `prepend_bos`, each window is BOS (else [CLS]) followed
    by context_size - 1 stream tokens. `max_tokens` keeps the first ceil(max_tokens /
    context_size) windows and stops tokenising once it has them. Deterministic.

    Returns a PackedCorpus with tokens/doc/pos of shape [n_ctx, context_size].
    """
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < (2 if prepend_bos else 1):
        need = "at least 2 with prepend_bos" if prepend_bos else "a positive integer"
        raise WorkbenchError(f"context_size must be {need}; got {context_size!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise WorkbenchError(f"max_tokens must be a positive integer or None; got {max_tokens!r}")
    check_split(split)
    documents = corpus.split(split)  # type: ignore[arg-type]
    if not documents:
        raise WorkbenchError(
            f"corpus {corpus.name!r} has no documents in split {split!r} ({len(corpus)} documents in all); "
            "use split='all' or a larger corpus"
        )

    eos_id = _special_id(tokenizer, "eos_token_id", "sep_token_id")
    bos_id = _special_id(tokenizer, "bos_token_id", "cls_token_id") if prepend_bos else None
    if prepend_bos and bos_id is None:
        raise WorkbenchError("prepend_bos=True but the tokenizer has neither a BOS nor a [CLS] token")

    stream_per_window = context_size - 1 if prepend_bos else context_size
    n_windows_wanted = math.ceil(max_tokens / context_size) if max_tokens is not None else None
    stream_wanted = n_windows_wanted * stream_per_window if n_windows_wanted is not None else None

    token_parts: list[torch.Tensor] = []
    doc_parts: list[torch.Tensor] = []
    pos_parts: list[torch.Tensor] = []
    n_stream = 0
    for doc_index, ids in _encode_documents(tokenizer, documents, add_special_tokens=False):
        if eos_id is not None:
            ids = ids + [eos_id]
        length = len(ids)
        if length == 0:
            continue
        token_parts.append(torch.tensor(ids, dtype=torch.long))
        doc_parts.append(torch.full((length,), doc_index, dtype=torch.long))
        pos_parts.append(torch.arange(length, dtype=torch.long))
        n_stream += length
        if stream_wanted is not None and n_stream >= stream_wanted:
            break

    n_windows = n_stream // stream_per_window
    if n_windows_wanted is not None:
        n_windows = min(n_windows, n_windows_wanted)
    if n_windows == 0:
        raise WorkbenchError(
            f"split {split!r} of corpus {corpus.name!r} has {n_stream} tokens, fewer than one context of "
            f"{stream_per_window}; use a smaller context_size or a larger corpus"
        )
    used = n_windows * stream_per_window
    stream = [torch.cat(parts)[:used].view(n_windows, stream_per_window) for parts in (token_parts, doc_parts, pos_parts)]
    tokens, doc, pos = stream
    if prepend_bos:
        tokens = torch.cat([torch.full((n_windows, 1), bos_id, dtype=torch.long), tokens], dim=1)
        marker = torch.full((n_windows, 1), -1, dtype=torch.long)
        doc, pos = torch.cat([marker, doc], dim=1), torch.cat([marker, pos], dim=1)
    return PackedCorpus(tokens=tokens.contiguous(), doc=doc.contiguous(), pos=pos.contiguous(),
                        corpus=corpus.name, split=split, context_size=context_size)


def split_documents(texts: list[str], tokenizer: Any, context_size: int) -> list[tuple[int, int, list[int]]]:
    """Tokenise raw texts (with the tokenizer's usual special tokens) and chunk long ones.

    A text of n tokens gives ceil(n / context_size) consecutive windows; the last may be
    shorter. Returns (text index, start position of the window in that text's tokens,
    token ids), in text order; every token appears in exactly one window.
    """
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 1:
        raise WorkbenchError(f"context_size must be a positive integer; got {context_size!r}")
    if isinstance(texts, str):
        raise WorkbenchError("split_documents expects a list of texts, not one string; wrap it: [text]")
    texts = list(texts)
    if not texts:
        raise WorkbenchError("no texts given: expected a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise WorkbenchError(f"text {i} is {type(text).__name__}, expected a string")
        if not text.strip():
            raise WorkbenchError(f"text {i} is blank; give some text or drop it")
    windows: list[tuple[int, int, list[int]]] = []
    for index, ids in _encode_documents(tokenizer, list(enumerate(texts)), add_special_tokens=True):
        for start in range(0, len(ids), context_size):
            windows.append((index, start, ids[start:start + context_size]))
    return windows


def _special_id(tokenizer: Any, *attributes: str) -> int | None:
    """The first of the tokenizer's special-token ids (e.g. eos, then sep) that is set."""
    for attribute in attributes:
        value = getattr(tokenizer, attribute, None)
        if value is not None:
            return int(value)
    return None


def _encode_documents(tokenizer: Any, documents: list[tuple[int, str]], add_special_tokens: bool) -> Iterator[tuple[int, list[int]]]:
    """Yield (document index, token ids) in order, tokenising in batches with a progress bar."""
    from tqdm.auto import tqdm

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        # An earlier `tokenizer(..., truncation=True, padding=...)` call leaves these set on
        # the shared backend; encode with an untouched copy so nothing is cut or padded.
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    bar = tqdm(total=len(documents), desc="tokenising", unit="doc", leave=False,
               disable=None if len(documents) >= _PROGRESS_MIN_DOCS else True)
    try:
        for start in range(0, len(documents), ENCODE_BATCH_DOCS):
            batch = documents[start:start + ENCODE_BATCH_DOCS]
            texts = [text for _, text in batch]
            if backend is not None:
                encoded = [e.ids for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
            else:
                encoded = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
            bar.update(len(batch))
            for (index, _), ids in zip(batch, encoded):
                yield index, list(ids)
    finally:
        bar.close()
