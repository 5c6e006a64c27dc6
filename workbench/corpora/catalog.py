"""The named offline corpora: where each one lives, where it came from, under what licence.

The files are built by `scripts/build_corpora.py` from Debian text packages and shipped
in `data/corpora/` (gzipped JSON lines, one `{"text": ...}` object per document).
`data/corpora/README.md` gives the counts and the exact rebuild command.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CorpusEntry:
    """One shipped corpus: its file name under data/corpora and its provenance."""

    name: str
    """The name `load_corpus` accepts."""
    filename: str
    """File under `data/corpora/` (gzipped JSON lines with a "text" field)."""
    source: str
    """Where the text comes from (Debian package and version, upstream)."""
    license: str
    """Licence of the text, as stated in the Debian copyright file."""
    description: str
    """One line on what a document is."""


NAMED_CORPORA: dict[str, CorpusEntry] = {
    entry.name: entry
    for entry in (
        CorpusEntry(
            name="pydocs",
            filename="pydocs.jsonl.gz",
            source="Debian python3.11-doc 3.11.2-6+deb12u9: reStructuredText sources of the Python 3.11 documentation "
            "(html/_sources/**/*.rst.txt), directives, code, tables and markup removed",
            license="PSF-2.0 (PSF License Agreement for Python 3.11 and its documentation)",
            description="English prose of one or more consecutive sections of a documentation page (>= ~1000 chars)",
        ),
        CorpusEntry(
            name="wordnet",
            filename="wordnet.jsonl.gz",
            source="Debian wordnet-base 1:3.0-37: WordNet 3.0 data.noun/verb/adj/adv (Princeton University)",
            license="WordNet 3.0 licence (permissive; WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.)",
            description="40 consecutive synsets (by file offset) of one part of speech: 'lemmas (pos): gloss; \"examples\"'",
        ),
        CorpusEntry(
            name="jargon",
            filename="jargon.jsonl.gz",
            source="Debian jargon-text 4.4.7-4.1: The Jargon File, version 4.4.7 (Eric S. Raymond)",
            license="public domain (\"This document (the Jargon File) is in the public domain\")",
            description="one lexicon entry: headword, part of speech and the entry's paragraphs",
        ),
    )
}

DEFAULT_CORPUS = "default"
"""All named corpora interleaved deterministically (see `sources.interleave`)."""

CORPUS_NAMES: tuple[str, ...] = (*NAMED_CORPORA, DEFAULT_CORPUS)
