"""Documents of fortune-cookie quotes from the Debian `fortunes-min` package.

The files under /usr/share/games/fortunes/ (`fortunes`, `literature`, `riddles`) hold
quotes separated by lines containing only `%`. Quotes are short, so consecutive ones are
grouped (blank line between them) into documents of at least ~1000 characters.
Used only for the on-demand training corpus (`build_corpora.py --train-corpus`).
"""

from __future__ import annotations

from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")


def fortune_quotes(path: Path) -> list[str]:
    """The quotes of one fortune file, stripped, in file order."""
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    quotes, current = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            quotes.append("\n".join(current).strip())
            current = []
        else:
            current.append(line.rstrip())
    quotes.append("\n".join(current).strip())
    return [q for q in quotes if q]


def fortune_documents(fortunes_dir: Path = FORTUNES_DIR, min_chars: int = 1000) -> list[str]:
    """Groups of consecutive quotes, file by file, each at least `min_chars` long (the last may be shorter)."""
    docs: list[str] = []
    for name in FORTUNE_FILES:
        path = fortunes_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; install the Debian package fortunes-min")
        group: list[str] = []
        for quote in fortune_quotes(path):
            group.append(quote)
            if sum(map(len, group)) >= min_chars:
                docs.append("\n\n".join(group))
                group = []
        if group:
            docs.append("\n\n".join(group))
    return docs
