"""Documents of Jargon File entries from the Debian `jargon-text` package (jargon.txt.gz).

The text edition lists each lexicon entry as a header line `   :headword: /pron/, pos.`
followed by paragraphs indented three spaces; letter sections start with a line indented
two spaces and a table of contents of headwords. One document per entry:

    abbrev (n.)

    Common abbreviation for 'abbreviation'.

Pronunciations are dropped, `{cross references}` lose their braces, paragraphs are
reflowed to one line, and more deeply indented blocks (ASCII art, code, verse) are dropped.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

JARGON_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")

_HEADER = re.compile(r"^   :(.+?):(.*)$")
_PRONUNCIATION = re.compile(r"/[^/]*/,?\s*")
_CROSS_REFERENCE = re.compile(r"\{([^{}]+)\}")
_PART_TITLE = re.compile(r"^\s+Part\W+[IVX]+\.")  # centred "Part III. Appendices": the lexicon is over


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _render_entry(headword: str, header_rest: str, body: list[str]) -> str | None:
    """Format one entry; None when it has no prose body."""
    pos = _PRONUNCIATION.sub("", header_rest).strip(" ,")
    title = f"{headword} ({pos})" if pos else headword
    paragraphs, current = [], []
    for line in body + [""]:
        if line.strip() and _indent(line) == 3:
            current.append(line.strip())
            continue
        if current:
            paragraphs.append(_CROSS_REFERENCE.sub(r"\1", " ".join(current)))
            current = []
    if not paragraphs:
        return None
    return "\n\n".join([title, *paragraphs])


def jargon_documents(path: Path = JARGON_FILE) -> list[str]:
    """One document per lexicon entry, in the order of the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; install the Debian package jargon-text")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        lines = handle.read().split("\n")
    docs: list[str] = []
    entry: tuple[str, str] | None = None
    body: list[str] = []

    def finish() -> None:
        if entry is not None:
            doc = _render_entry(entry[0], entry[1], body)
            if doc:
                docs.append(doc)

    for line in lines:
        if entry is not None and _PART_TITLE.match(line):
            break
        header = _HEADER.match(line)
        if header:
            finish()
            entry, body = (header.group(1).strip(), header.group(2)), []
        elif entry is not None and line.strip() and _indent(line) < 3:
            # A letter-section heading or an appendix title: the entry is over, and the
            # headword index that follows is not part of any entry.
            finish()
            entry, body = None, []
        elif entry is not None:
            body.append(line)
    finish()
    return docs
