"""Plain-text documents from the English manual pages installed on this machine.

Each page of /usr/share/man/man{1,5,8} is rendered with
`groff -Tutf8 -mandoc -P-cbou -rLL=4000n -rHY=0` (no colour, bold, underline or
overstrike; very long lines, so a paragraph is one line; no hyphenation), then:
the running header/footer and the boilerplate sections (SYNOPSIS, SEE ALSO, AUTHOR,
COPYRIGHT, ...) are dropped, paragraphs that do not read as text are dropped, and a
paragraph already seen on an earlier page is dropped (generated pages repeat their
global options). Tools that ship thousands of generated pages are capped at
`MAX_PAGES_PER_FAMILY` pages (family = the name before the first underscore).

What is installed differs between machines, so this part of the training corpus does
too; on one machine the output is deterministic (sorted paths, ordered results).
Used only for the on-demand training corpus (`build_corpora.py --train-corpus`).
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
SECTIONS = ("man1", "man5", "man8")
MAX_PAGES_PER_FAMILY = 64
GROFF_ARGS = ["-Tutf8", "-mandoc", "-P-cbou", "-rLL=4000n", "-rHY=0"]
DROPPED_SECTIONS = frozenset({
    "SYNOPSIS", "SEE ALSO", "AUTHOR", "AUTHORS", "COPYRIGHT", "REPORTING BUGS", "COLOPHON",
    "LICENSE", "LICENCE", "AVAILABILITY", "COPYING", "TRADEMARKS", "SYNTAX",
})
MIN_DOC_CHARS = 200

_WORD = re.compile(r"^[A-Za-z][a-z'’-]*[,.;:!?)]?$")


def _readable(paragraph: str) -> bool:
    """Text rather than a command line, table row or option list without explanation."""
    words = paragraph.split()
    if len(words) < 4:
        return False
    letters = sum(c.isalpha() for c in paragraph)
    visible = sum(not c.isspace() for c in paragraph)
    return letters >= 0.6 * visible and sum(1 for w in words if _WORD.match(w)) >= 0.5 * len(words)


def man_page_paths(root: Path = MAN_ROOT) -> list[Path]:
    """Compressed English pages of sections 1, 5, 8: sorted, symlinks resolved and deduplicated, families capped."""
    seen: set[Path] = set()
    per_family: dict[str, int] = {}
    paths: list[Path] = []
    for section in SECTIONS:
        for path in sorted((root / section).glob("*.gz")):
            real = path.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            family = path.name.split(".")[0].split("_")[0]
            per_family[family] = per_family.get(family, 0) + 1
            if per_family[family] <= MAX_PAGES_PER_FAMILY:
                paths.append(path)
    return paths


def render_page(path: Path) -> str:
    """The groff plain-text rendering of one page ("" for `.so` redirects and failures)."""
    source = gzip.decompress(path.read_bytes())
    if source.lstrip().startswith(b".so "):  # a pointer to another page, rendered there
        return ""
    try:
        result = subprocess.run(["groff", *GROFF_ARGS], input=source, capture_output=True, timeout=60,
                                env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout.decode("utf-8", errors="replace") if result.returncode == 0 else ""


def page_paragraphs(rendered: str) -> tuple[str, list[str]]:
    """(the NAME line, the kept paragraphs) of one rendered page."""
    lines = rendered.replace("\r", "").split("\n")
    content = [i for i, line in enumerate(lines) if line.strip()]
    if len(content) < 3:
        return "", []
    lines = lines[content[0] + 1: content[-1]]  # drop the running header and footer
    name, section = "", ""
    paragraphs: list[str] = []
    current: list[str] = []

    def flush() -> None:
        nonlocal name
        if not current:
            return
        text = re.sub(r"\s+", " ", " ".join(current)).strip()
        current.clear()
        if section == "NAME" and not name:
            name = text
        elif section not in DROPPED_SECTIONS and _readable(text):
            paragraphs.append(text)

    for line in lines:
        if line.strip() and not line.startswith(" "):  # a section heading at column 0
            flush()
            section = line.strip().upper()
        elif not line.strip():
            flush()
        else:
            current.append(line.strip())
    flush()
    return name, paragraphs


def manpage_documents(root: Path = MAN_ROOT, workers: int = 4) -> list[str]:
    """One document per page (NAME line, then its new paragraphs), pages in sorted order."""
    if shutil.which("groff") is None:
        raise FileNotFoundError("groff is not installed; install the Debian package groff-base")
    paths = man_page_paths(root)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # groff runs in subprocesses: threads suffice
        rendered = list(pool.map(render_page, paths))
    seen: set[str] = set()
    docs: list[str] = []
    for text in rendered:
        name, paragraphs = page_paragraphs(text)
        fresh = [p for p in paragraphs if p not in seen]
        seen.update(fresh)
        doc = "\n\n".join(([name] if name else []) + fresh)
        if fresh and len(doc) >= MIN_DOC_CHARS:
            docs.append(doc)
    return docs
