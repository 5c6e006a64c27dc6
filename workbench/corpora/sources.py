"""Loading a corpus by name: the shipped offline corpora, local text files, Hugging Face datasets.

`load_corpus(name_or_path)` accepts
- a name from `list_corpora()` ("pydocs", "wordnet", "jargon", "default" = all three
  interleaved), read from `data/corpora/*.jsonl.gz`;
- a local file: `.txt` / `.txt.gz` (documents separated by blank lines) or `.jsonl` /
  `.jsonl.gz` (one JSON object per line; the field "text", or the object's only string field);
- `hf:DATASET[:CONFIG][@SPLIT]`, streamed through the `datasets` package when it is
  installed and the hub is reachable (split defaults to "train").

Blank documents are dropped; a corpus without any non-blank document is an error.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

from workbench.corpora.catalog import CORPUS_NAMES, DEFAULT_CORPUS, NAMED_CORPORA
from workbench.corpora.corpus import Corpus
from workbench.errors import CorruptFileError, UnknownNameError, WorkbenchError
from workbench.paths import data_dir

LOCAL_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
_PATH_HINT = "or a path to a .txt/.jsonl file"
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def corpora_dir() -> Path:
    """The folder of the shipped corpora (`data/corpora`, or $WORKBENCH_DATA/corpora)."""
    return data_dir() / "corpora"


def list_corpora() -> list[str]:
    """Names of the corpora available offline (their files are present), "default" last."""
    present = [name for name, entry in NAMED_CORPORA.items() if (corpora_dir() / entry.filename).is_file()]
    if len(present) == len(NAMED_CORPORA):
        present.append(DEFAULT_CORPUS)
    return present


def load_corpus(name_or_path: str, max_docs: int | None = None) -> Corpus:
    """A corpus by name, local path or `hf:` dataset id; `max_docs` keeps the first documents.

    Raises UnknownNameError for an unknown name, WorkbenchError for a missing file, an
    unsupported format, an empty corpus, or an unreachable/missing `datasets`.
    """
    if max_docs is not None and (isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1):
        raise WorkbenchError(f"max_docs must be a positive integer or None; got {max_docs!r}")
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise WorkbenchError(f"expected a corpus name ({', '.join(CORPUS_NAMES)}) {_PATH_HINT}; got {name_or_path!r}")
    spec = str(name_or_path)
    if spec in CORPUS_NAMES:
        return _load_named(spec, max_docs)
    if spec.startswith("hf:"):
        return _load_hf(spec, max_docs)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_local(path, max_docs)
    if path.exists():
        raise WorkbenchError(f"corpus path {str(path)!r} is not a file; give a {'/'.join(LOCAL_SUFFIXES)} file")
    if _looks_like_path(spec):
        raise WorkbenchError(f"corpus file not found: {str(path)!r}; check the path")
    raise UnknownNameError("corpus", spec, list_corpora() or list(CORPUS_NAMES), hint=_PATH_HINT)


def interleave(parts: list[tuple[str, ...]]) -> list[str]:
    """Merge several document lists so each is spread evenly through the result.

    Document i of a part with n documents sits at relative position (i + 0.5) / n;
    ties go to the earlier part. Deterministic; any prefix holds every part in
    proportion to its size.
    """
    keyed = [((2 * i + 1) / (2 * len(docs)), p, i) for p, docs in enumerate(parts) for i in range(len(docs))]
    keyed.sort()
    return [parts[p][i] for _, p, i in keyed]


# ----------------------------------------------------------------------------- named


@lru_cache(maxsize=None)
def _read_shipped(name: str) -> tuple[str, ...]:
    """All documents of one shipped corpus file (cached: these files are immutable)."""
    path = corpora_dir() / NAMED_CORPORA[name].filename
    if not path.is_file():
        raise WorkbenchError(
            f"shipped corpus file {str(path)!r} is missing; rebuild it with "
            "`python scripts/build_corpora.py` (needs the Debian packages named in data/corpora/README.md)"
        )
    return tuple(_jsonl_texts(path, max_docs=None))


@lru_cache(maxsize=1)
def _default_docs() -> tuple[str, ...]:
    return tuple(interleave([_read_shipped(name) for name in NAMED_CORPORA]))


def _load_named(name: str, max_docs: int | None) -> Corpus:
    if name == DEFAULT_CORPUS:
        docs = _default_docs()
        entries = list(NAMED_CORPORA.values())
        source = "interleaved " + "; ".join(f"{e.name}: {e.source}" for e in entries)
        license = "; ".join(f"{e.name}: {e.license}" for e in entries)
    else:
        docs, entry = _read_shipped(name), NAMED_CORPORA[name]
        source, license = entry.source, entry.license
    return Corpus(name=name, docs=docs[:max_docs], source=source, license=license)


# ----------------------------------------------------------------------------- local files


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith(("~", ".")) or spec.lower().endswith(LOCAL_SUFFIXES + (".json", ".gz"))


def _load_local(path: Path, max_docs: int | None) -> Corpus:
    lower = path.name.lower()
    if lower.endswith((".jsonl", ".jsonl.gz")):
        docs = list(_jsonl_texts(path, max_docs))
    elif lower.endswith((".txt", ".txt.gz")):
        docs = list(_take(_txt_texts(path), max_docs))
    else:
        raise WorkbenchError(
            f"cannot read corpus file {str(path)!r}: expected a {', '.join(LOCAL_SUFFIXES)} file "
            "(plain text with blank lines between documents, or JSON lines with a \"text\" field)"
        )
    if not docs:
        raise WorkbenchError(f"corpus file {str(path)!r} is empty: it has no non-blank document")
    return Corpus(name=str(path), docs=tuple(docs), source=f"local file {path.resolve()}", license="unknown")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _txt_texts(path: Path) -> Iterator[str]:
    """Documents of a text file: runs of lines separated by blank lines, stripped."""
    try:
        with _open_text(path) as handle:
            text = handle.read()
    except (OSError, EOFError) as err:  # e.g. a truncated or non-gzip .gz
        raise CorruptFileError(f"cannot read {str(path)!r}: {err}") from err
    for chunk in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        if chunk.strip():
            yield chunk.strip()


def _jsonl_texts(path: Path, max_docs: int | None) -> Iterator[str]:
    """The text of each JSON line ("text" field, or the only string field); blank ones skipped."""
    count = 0
    try:
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if max_docs is not None and count >= max_docs:
                    return
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CorruptFileError(f"{str(path)!r} line {line_no} is not valid JSON ({err.msg})") from err
                text = _record_text(record, f"{str(path)!r} line {line_no}")
                if text.strip():
                    count += 1
                    yield text
    except (OSError, EOFError) as err:
        raise CorruptFileError(f"cannot read {str(path)!r}: {err}") from err


def _record_text(record: object, where: str) -> str:
    """The document text of one JSON record: its "text" field, or its only string field."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise CorruptFileError(f"{where}: expected a JSON object with a \"text\" field, got {type(record).__name__}")
    if "text" in record:
        if not isinstance(record["text"], str):
            raise CorruptFileError(f"{where}: field \"text\" is {type(record['text']).__name__}, expected a string")
        return record["text"]
    strings = [key for key, value in record.items() if isinstance(value, str)]
    if len(strings) != 1:
        raise CorruptFileError(
            f"{where}: no \"text\" field and {len(strings)} string fields ({', '.join(strings) or 'none'}); "
            "name the document field \"text\""
        )
    return record[strings[0]]


def _take(items: Iterable[str], limit: int | None) -> Iterator[str]:
    for count, item in enumerate(items):
        if limit is not None and count >= limit:
            return
        yield item


# ----------------------------------------------------------------------------- Hugging Face


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """Split "hf:DATASET[:CONFIG][@SPLIT]" into (dataset, config or None, split; default "train")."""
    rest = spec[len("hf:"):]
    split = "train"
    if "@" in rest:
        rest, split = rest.rsplit("@", 1)
    dataset, _, config = rest.partition(":")
    if not dataset or not split or (":" in rest and not config):
        raise WorkbenchError(f"expected hf:DATASET[:CONFIG][@SPLIT], e.g. hf:stas/openwebtext-10k@train; got {spec!r}")
    return dataset, config or None, split


def _load_hf(spec: str, max_docs: int | None) -> Corpus:
    dataset, config, split = parse_hf_spec(spec)
    try:
        import datasets
    except ImportError as err:
        raise WorkbenchError(
            f"corpus {spec!r} needs the `datasets` package, which is not installed: "
            "`pip install datasets`, or use a shipped corpus or a local .txt/.jsonl file"
        ) from err
    docs: list[str] = []
    try:
        stream = datasets.load_dataset(dataset, config, split=split, streaming=True)
        for row_no, row in enumerate(stream):
            if max_docs is not None and len(docs) >= max_docs:
                break
            text = _record_text(row, f"{spec} row {row_no}")
            if text.strip():
                docs.append(text)
    except WorkbenchError:
        raise
    except Exception as err:  # network, unknown dataset/config/split: all reported the same way
        raise WorkbenchError(
            f"could not load Hugging Face dataset {spec!r} ({type(err).__name__}: {err}); "
            "check the name, config and split and that the hub is reachable (HF_HUB_OFFLINE unset), "
            "or use a shipped corpus or a local file"
        ) from err
    if not docs:
        raise WorkbenchError(f"Hugging Face dataset {spec!r} gave no non-blank document")
    return Corpus(name=spec, docs=tuple(docs), source=f"Hugging Face dataset {dataset}"
                  + (f" (config {config})" if config else "") + f", split {split}", license="see the dataset card")
