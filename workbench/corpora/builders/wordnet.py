"""Documents of WordNet 3.0 glosses from the Debian `wordnet-base` data files.

Each synset line of `data.noun|verb|adj|adv` is
`offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [pointers...] | gloss`
(w_cnt in hexadecimal). We keep the lemmas and the gloss with its example sentences:

    abaxial, dorsal (adj.): facing away from the axis of an organ or organism; "the abaxial ..."

Synsets are grouped in file-offset order, which follows WordNet's lexicographer files
(noun.animal, noun.artifact, ...), so a document holds related senses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS_OF_SPEECH = (("noun", "n."), ("verb", "v."), ("adj", "adj."), ("adv", "adv."))
SYNSETS_PER_DOCUMENT = 40

_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")  # attributive / predicative / postnominal markers


def synset_lines(path: Path, pos_label: str) -> Iterator[str]:
    """One 'lemmas (pos): gloss' line per synset of a WordNet data file, in offset order."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("  ") or "|" not in line:  # the licence header lines start with two spaces
                continue
            fields, gloss = line.split("|", 1)
            parts = fields.split()
            n_words = int(parts[3], 16)
            lemmas = [_ADJ_MARKER.sub("", parts[4 + 2 * k]).replace("_", " ") for k in range(n_words)]
            gloss = gloss.strip().replace("`", "'")
            if gloss:
                yield f"{', '.join(dict.fromkeys(lemmas))} ({pos_label}): {gloss}"


def wordnet_documents(wordnet_dir: Path = WORDNET_DIR, per_document: int = SYNSETS_PER_DOCUMENT) -> list[str]:
    """Documents of `per_document` consecutive synset lines, nouns then verbs, adjectives, adverbs."""
    docs: list[str] = []
    for name, label in PARTS_OF_SPEECH:
        path = wordnet_dir / f"data.{name}"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; install the Debian package wordnet-base")
        lines = list(synset_lines(path, label))
        docs.extend("\n".join(lines[i:i + per_document]) for i in range(0, len(lines), per_document))
    return docs
