"""Deterministic gzipped JSON-lines output: the same documents give the same bytes.

One `{"text": ...}` object per line (UTF-8, non-ASCII kept), gzip level 9 with the
header's mtime set to 0 and no file name stored, written atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from workbench.atomic import write_bytes


@dataclass(frozen=True)
class WrittenCorpus:
    """What was written: path, counts and checksum (for the README and the build log)."""

    path: Path
    docs: int
    chars: int
    compressed_bytes: int
    sha256: str


def encode_jsonl_gz(docs: list[str]) -> bytes:
    """The gzipped JSON-lines bytes of `docs` (deterministic)."""
    payload = "".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in docs).encode("utf-8")
    return gzip.compress(payload, compresslevel=9, mtime=0)


def write_jsonl_gz(path: Path, docs: list[str]) -> WrittenCorpus:
    """Write `docs` to `path` atomically; return the counts and SHA-256 of the file."""
    data = encode_jsonl_gz(docs)
    write_bytes(path, data)
    return WrittenCorpus(path=path, docs=len(docs), chars=sum(map(len, docs)), compressed_bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest())
