"""Corpora: loading (shipped, local files, hf), the held-out split, packing with provenance, chunking.

Uses small slices of the shipped corpora and the tiny tokenizers, so everything runs in seconds.
"""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch

from workbench.corpora import Corpus, PackedCorpus, list_corpora, load_corpus, pack_corpus, split_documents
from workbench.corpora.builders.jsonl_gz import encode_jsonl_gz
from workbench.corpora.builders.rst_prose import rst_documents, rst_sections
from workbench.corpora.corpus import is_held_out
from workbench.corpora.sources import interleave, parse_hf_spec
from workbench.engine.tiny_tokenizers import load_tiny_tokenizer
from workbench.errors import CorruptFileError, UnknownNameError, WorkbenchError


@pytest.fixture(scope="module")
def bpe():
    return load_tiny_tokenizer("bpe")


@pytest.fixture(scope="module")
def wordpiece():
    return load_tiny_tokenizer("wordpiece")


@pytest.fixture(scope="module")
def small_default():
    return load_corpus("default", max_docs=120)


def stream_of(corpus: Corpus, tokenizer, split: str) -> tuple[list[int], list[int], list[int]]:
    """The reference token stream of a split: (tokens, doc, pos), each document then EOS."""
    tokens, docs, positions = [], [], []
    for index, text in corpus.split(split):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        tokens += ids
        docs += [index] * len(ids)
        positions += list(range(len(ids)))
    return tokens, docs, positions


# ----------------------------------------------------------------------------- loading


def test_shipped_corpora_are_listed_and_load_with_provenance():
    assert list_corpora() == ["pydocs", "wordnet", "jargon", "default"]
    for name in ("pydocs", "wordnet", "jargon"):
        corpus = load_corpus(name, max_docs=5)
        assert len(corpus) == 5 and corpus.name == name
        # Documents are grouped sections / synsets, or a headword with its entry: never one bare line.
        assert all("\n" in doc and len(doc) > 50 for doc in corpus.docs)
        assert corpus.source.startswith("Debian ") and corpus.license
    assert "PSF" in load_corpus("pydocs", max_docs=1).license
    assert "public domain" in load_corpus("jargon", max_docs=1).license


def test_default_interleaves_all_three_and_prefixes_are_stable(small_default):
    parts = {name: set(load_corpus(name, max_docs=60).docs) for name in ("pydocs", "wordnet", "jargon")}
    first = small_default.docs[:30]
    for name, docs in parts.items():
        assert any(doc in docs for doc in first), f"no {name} document among the first 30 of default"
    assert load_corpus("default", max_docs=40).docs == small_default.docs[:40]


def test_interleave_spreads_parts_evenly():
    merged = interleave([("a0", "a1", "a2", "a3"), ("b0", "b1")])
    assert merged == ["a0", "b0", "a1", "a2", "b1", "a3"]


def test_split_is_disjoint_covering_about_five_percent_and_pinned():
    corpus = load_corpus("default", max_docs=4000)
    train = [i for i, _ in corpus.split("train")]
    test = [i for i, _ in corpus.split("test")]
    assert set(train).isdisjoint(test)
    assert sorted(train + test) == list(range(len(corpus)))
    assert 0.035 < len(test) / len(corpus) < 0.065
    assert corpus.split("all") == list(enumerate(corpus.docs))
    assert all(corpus.docs[i] == text for i, text in corpus.split("test"))
    # The hash is BLAKE2b of the index, not Python's salted hash(): pinned values hold in any process.
    assert [i for i in range(200) if is_held_out(i)] == [1, 4, 15, 65, 84, 112, 118, 136, 151, 180, 193, 197, 198]
    # A prefix of a corpus holds out the same documents.
    small = load_corpus("default", max_docs=300)
    assert small.split("test") == [(i, t) for i, t in corpus.split("test") if i < 300]
    with pytest.raises(WorkbenchError, match="split must be one of"):
        corpus.split("validation")


def test_local_text_and_jsonl_files(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("First document,\nstill first.\n\n\n  \nSecond one.\n\nThird.\n", encoding="utf-8")
    corpus = load_corpus(str(txt))
    assert corpus.docs == ("First document,\nstill first.", "Second one.", "Third.")
    assert load_corpus(str(txt), max_docs=2).docs == corpus.docs[:2]

    gz = tmp_path / "notes.txt.gz"
    gz.write_bytes(gzip.compress(txt.read_bytes()))
    assert load_corpus(str(gz)).docs == corpus.docs

    rows = [{"text": "alpha beta", "id": 1}, {"text": "   "}, {"text": "gamma"}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_corpus(str(jsonl)).docs == ("alpha beta", "gamma")  # blank documents dropped

    only_field = tmp_path / "body.jsonl.gz"
    only_field.write_bytes(gzip.compress(b'{"body": "one", "n": 3}\n{"body": "two"}\n'))
    assert load_corpus(str(only_field)).docs == ("one", "two")


def test_bad_local_files_say_what_is_wrong(tmp_path):
    two_fields = tmp_path / "two.jsonl"
    two_fields.write_text('{"title": "a", "body": "b"}\n', encoding="utf-8")
    with pytest.raises(CorruptFileError, match=r"line 1: no \"text\" field and 2 string fields"):
        load_corpus(str(two_fields))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(CorruptFileError, match="line 2 is not valid JSON"):
        load_corpus(str(broken))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(WorkbenchError, match="empty"):
        load_corpus(str(blank))
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(WorkbenchError, match=r"expected a \.txt"):
        load_corpus(str(csv))
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(WorkbenchError, match="not found.*nowhere.jsonl"):
        load_corpus(str(missing))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        load_corpus("wikipedia")
    message = str(info.value)
    assert "unknown corpus 'wikipedia'" in message and "pydocs" in message and ".txt/.jsonl" in message
    with pytest.raises(WorkbenchError, match="max_docs"):
        load_corpus("pydocs", max_docs=0)


def test_corpus_without_text_is_rejected():
    with pytest.raises(WorkbenchError, match="empty"):
        Corpus(name="x", docs=("", "  \n"), source="test", license="none")
    with pytest.raises(WorkbenchError, match="empty"):
        Corpus(name="x", docs=(), source="test", license="none")


def test_hf_spec_parsing_and_missing_datasets_package():
    assert parse_hf_spec("hf:stas/openwebtext-10k") == ("stas/openwebtext-10k", None, "train")
    assert parse_hf_spec("hf:wikitext:wikitext-2-raw-v1@test") == ("wikitext", "wikitext-2-raw-v1", "test")
    with pytest.raises(WorkbenchError, match="hf:DATASET"):
        parse_hf_spec("hf:@train")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(WorkbenchError, match="needs the `datasets` package"):
            load_corpus("hf:wikitext:wikitext-2-raw-v1", max_docs=3)
    else:  # installed, but HF_HUB_OFFLINE=1 in tests: the failure must still be a WorkbenchError
        with pytest.raises(WorkbenchError, match="could not load Hugging Face dataset"):
            load_corpus("hf:no-such-user/no-such-dataset", max_docs=3)


# ----------------------------------------------------------------------------- packing


def test_pack_keeps_provenance_and_drops_the_partial_window(small_default, bpe):
    context = 64
    packed = pack_corpus(small_default, bpe, context)
    tokens, docs, positions = stream_of(small_default, bpe, "train")
    assert isinstance(packed, PackedCorpus) and packed.split == "train" and packed.corpus == "default"
    assert len(packed) == len(tokens) // context
    assert packed.tokens.shape == packed.doc.shape == packed.pos.shape == (len(packed), context)
    used = len(packed) * context
    assert packed.tokens.flatten().tolist() == tokens[:used]
    assert packed.doc.flatten().tolist() == docs[:used]
    assert packed.pos.flatten().tolist() == positions[:used]
    # Decoding a document's run of tokens in a window gives back that span of the document's text.
    row = len(packed) // 2
    for doc_index in packed.doc[row].unique().tolist():
        mask = (packed.doc[row] == doc_index) & (packed.tokens[row] != bpe.eos_token_id)
        span = bpe.decode(packed.tokens[row][mask].tolist())
        start = packed.pos[row][mask][0].item()
        prefix = bpe.decode(bpe(small_default.docs[doc_index], add_special_tokens=False)["input_ids"][:start])
        assert small_default.docs[doc_index].startswith(prefix + span)
    held_out = {i for i, _ in small_default.split("test")}
    assert held_out and held_out.isdisjoint(packed.doc.unique().tolist())


def test_pack_prepend_bos_and_max_tokens(small_default, bpe):
    context = 32
    packed = pack_corpus(small_default, bpe, context, prepend_bos=True, max_tokens=1000)
    assert len(packed) == math.ceil(1000 / context)
    assert (packed.tokens[:, 0] == bpe.bos_token_id).all()
    assert (packed.doc[:, 0] == -1).all() and (packed.pos[:, 0] == -1).all()
    tokens, docs, _ = stream_of(small_default, bpe, "train")
    stream = packed.tokens[:, 1:].flatten().tolist()
    assert stream == tokens[: len(stream)]  # each window carries context - 1 consecutive stream tokens
    assert (packed.doc[:, 1:] >= 0).all()
    unlimited = pack_corpus(small_default, bpe, context, prepend_bos=True)
    assert torch.equal(unlimited.tokens[: len(packed)], packed.tokens)
    assert len(unlimited) > len(packed)


def test_pack_test_split_and_bert_separator(small_default, wordpiece):
    packed = pack_corpus(small_default, wordpiece, 48, split="test")
    held_out = {i for i, _ in small_default.split("test")}
    assert set(packed.doc.unique().tolist()) <= held_out
    # No EOS in a BERT vocabulary: [SEP] ends each document instead.
    first_doc = packed.doc[0, 0].item()
    n_first = len(wordpiece(small_default.docs[first_doc], add_special_tokens=False)["input_ids"])
    if n_first < packed.tokens.numel():
        assert packed.tokens.flatten()[n_first].item() == wordpiece.sep_token_id


def test_pack_rejects_bad_arguments(bpe):
    tiny = Corpus(name="tiny", docs=("a few words only",) * 3, source="test", license="none")
    with pytest.raises(WorkbenchError, match="fewer than one context"):
        pack_corpus(tiny, bpe, 512, split="all")
    with pytest.raises(WorkbenchError, match="context_size"):
        pack_corpus(tiny, bpe, 0, split="all")
    with pytest.raises(WorkbenchError, match="at least 2 with prepend_bos"):
        pack_corpus(tiny, bpe, 1, split="all", prepend_bos=True)
    with pytest.raises(WorkbenchError, match="max_tokens"):
        pack_corpus(tiny, bpe, 4, split="all", max_tokens=0)


# ----------------------------------------------------------------------------- raw texts


def test_split_documents_chunks_every_token_exactly_once(wordpiece):
    long_text = " ".join(f"word{i}" for i in range(200))
    texts = ["A short text.", long_text, "Another short one."]
    context = 16
    windows = split_documents(texts, wordpiece, context)
    for index, text in enumerate(texts):
        full = wordpiece(text)["input_ids"]
        mine = [(start, ids) for i, start, ids in windows if i == index]
        assert [start for start, _ in mine] == list(range(0, len(full), context))
        assert [tok for _, ids in mine for tok in ids] == full
        assert all(1 <= len(ids) <= context for _, ids in mine)
    assert sum(1 for i, _, _ in windows if i == 1) > 1  # the long text was chunked, not truncated
    assert windows[0][2][0] == wordpiece.cls_token_id and windows[0][2][-1] == wordpiece.sep_token_id
    assert [i for i, _, _ in windows] == sorted(i for i, _, _ in windows)


def test_split_documents_rejects_empty_input(bpe):
    with pytest.raises(WorkbenchError, match="no texts"):
        split_documents([], bpe, 8)
    with pytest.raises(WorkbenchError, match="text 1 is blank"):
        split_documents(["fine", "  \n "], bpe, 8)
    with pytest.raises(WorkbenchError, match="list of texts"):
        split_documents("just a string", bpe, 8)


# ----------------------------------------------------------------------------- building


RST = """\
:mod:`json` --- JSON encoder
============================

.. module:: json
   :synopsis: Encode and decode.

Use :func:`json.dumps` to turn an object into a ``str`` of JSON, see `the spec <https://json.org>`_.

.. code-block:: python

   print("this is code and must not appear")

.. function:: dump(obj, fp, \\
                   indent=None)

   Serialize *obj* as a JSON formatted stream to **fp** [#note]_.

   .. versionchanged:: 3.2
      Allow strings for *indent* in addition to integers.

Example::

    >>> json.dumps([1, 2])

+------+------+
| grid | cell |
+------+------+

Closing words of the section come after the table here.
"""


def test_rst_prose_keeps_text_and_drops_code_and_markup():
    sections = rst_sections(RST)
    titles = [s.title for s in sections if s.title]
    assert titles == ["json — JSON encoder"]
    text = "\n".join(p for s in sections for p in s.paragraphs)
    assert "Use json.dumps() to turn an object into a str of JSON, see the spec." in text
    assert "Serialize obj as a JSON formatted stream to fp." in text
    assert "Changed in version 3.2: Allow strings for indent in addition to integers." in text
    assert "Closing words of the section come after the table here." in text
    for leaked in ("must not appear", ">>>", "synopsis", "dump(obj", "grid", "::", "`", "**"):
        assert leaked not in text, leaked
    assert rst_documents(RST, min_chars=10)[0].startswith("json — JSON encoder\n\nUse json.dumps()")


def test_jsonl_gz_output_is_byte_identical_across_builds():
    docs = ["first — ünïcode", 'second "quoted"']
    data = encode_jsonl_gz(docs)
    assert data == encode_jsonl_gz(list(docs))
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime is 0
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    assert [json.loads(line)["text"] for line in lines] == docs


def test_importing_corpora_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, workbench.corpora; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
