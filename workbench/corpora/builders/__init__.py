"""Text extractors that turn Debian text packages into corpus documents.

Used by `scripts/build_corpora.py` only (never imported by `workbench.corpora` itself):
`rst_prose` (Python docs sources), `wordnet` (glosses), `jargon` (Jargon File entries),
`fortunes` and `manpages` (the larger on-demand training corpus), `jsonl_gz`
(deterministic gzipped JSON-lines output).
"""
