"""A text corpus: documents in a fixed order, with a deterministic held-out split.

The held-out "test" split is about 5% of the documents, chosen by a stable hash of the
document index (BLAKE2b, not Python's salted `hash()`), so it is the same in every
process, on every machine, and for every `max_docs` prefix of the same corpus: a
document that is held out in a 100-document slice is held out in the full corpus.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from workbench.errors import WorkbenchError

TEST_FRACTION = 0.05
"""Share of documents held out as the "test" split."""

SPLITS = ("train", "test", "all")

# The hash maps a document index to [0, _HASH_BUCKETS); indices below the cut are "test".
_HASH_BUCKETS = 1 << 32
_TEST_CUT = int(TEST_FRACTION * _HASH_BUCKETS)


def is_held_out(doc_index: int) -> bool:
    """True when document `doc_index` belongs to the held-out "test" split (stable across runs)."""
    digest = hashlib.blake2b(str(doc_index).encode("ascii"), digest_size=4, person=b"wb-split").digest()
    return int.from_bytes(digest, "little") < _TEST_CUT


def check_split(split: str) -> None:
    """Raise unless `split` is "train", "test" or "all"."""
    if split not in SPLITS:
        raise WorkbenchError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")


@dataclass(frozen=True)
class Corpus:
    """Documents of one corpus in a fixed order, with provenance.

    A document's index in `docs` is its identity: splits, packing provenance
    (`PackedCorpus.doc`) and harvested feature examples refer to it.
    """

    name: str
    """A named corpus, a file path, or "hf:DATASET[:CONFIG][@SPLIT]"."""
    docs: tuple[str, ...]
    """The documents, at least one of them non-blank."""
    source: str
    """Where the text comes from (package and version, file path, dataset id)."""
    license: str
    """Licence of the text ("unknown" for local files and datasets without one)."""

    def __post_init__(self) -> None:
        if not isinstance(self.docs, tuple):
            object.__setattr__(self, "docs", tuple(self.docs))
        bad = next((i for i, d in enumerate(self.docs) if not isinstance(d, str)), None)
        if bad is not None:
            raise WorkbenchError(f"corpus {self.name!r}: document {bad} is {type(self.docs[bad]).__name__}, expected str")
        if not any(doc.strip() for doc in self.docs):
            raise WorkbenchError(
                f"corpus {self.name!r} is empty: it has no non-blank document; give a file with some text"
            )

    def __len__(self) -> int:
        return len(self.docs)

    def split(self, split: Literal["train", "test", "all"]) -> list[tuple[int, str]]:
        """(document index, text) pairs of a split, in document order.

        "test" is the held-out ~5% (see `is_held_out`), "train" the rest, "all" everything.
        A corpus too small to hold out any document has an empty "test" split.
        """
        check_split(split)
        if split == "all":
            return list(enumerate(self.docs))
        want_test = split == "test"
        return [(i, doc) for i, doc in enumerate(self.docs) if is_held_out(i) == want_test]

    def __repr__(self) -> str:
        chars = sum(map(len, self.docs))
        return f"Corpus(name={self.name!r}, docs={len(self.docs)}, chars={chars}, source={self.source!r})"
