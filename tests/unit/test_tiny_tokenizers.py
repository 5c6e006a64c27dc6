"""The shipped tiny tokenizers: special tokens, padding, round trips, deterministic training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from workbench.engine.tiny_tokenizers import load_tiny_tokenizer, tiny_tokenizer_path
from workbench.errors import UnknownNameError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bpe_special_tokens_padding_and_lossless_round_trip():
    tok = load_tiny_tokenizer("bpe")
    assert len(tok) == 1024 and tok.padding_side == "right"
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == eot
    text = "Sparse autoencoders read résumés, 日本語 and emoji 🚀 — losslessly.\n\tTabs too."
    ids = tok(text)["input_ids"]
    assert eot not in ids  # no special tokens are added: the caller decides about BOS
    assert tok.decode(ids) == text  # byte-level: every string survives
    batch = tok(["one two three four", "one"], padding=True)
    assert batch["input_ids"][1][-1] == eot and batch["attention_mask"][1][-1] == 0
    assert batch["attention_mask"][1][0] == 1  # padded on the right


def test_wordpiece_bert_template_pairs_and_specials():
    tok = load_tiny_tokenizer("wordpiece")
    assert len(tok) == 1024 and tok.padding_side == "right"
    specials = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id]
    assert specials == [0, 1, 2, 3, 4]
    enc = tok("The Cat sat.")
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == "the cat sat."
    pair = tok("first part", "second")
    assert pair["input_ids"].count(tok.sep_token_id) == 2
    assert pair["token_type_ids"][0] == 0 and pair["token_type_ids"][-1] == 1
    masked = tok("a [MASK] here")["input_ids"]
    assert tok.mask_token_id in masked


def test_each_call_returns_an_independent_tokenizer():
    first, second = load_tiny_tokenizer("bpe"), load_tiny_tokenizer("bpe")
    first.padding_side = "left"
    assert second.padding_side == "right"


def test_unknown_kind_and_small_files():
    with pytest.raises(UnknownNameError, match="bpe, wordpiece"):
        load_tiny_tokenizer("sentencepiece")
    for kind in ("bpe", "wordpiece"):
        assert tiny_tokenizer_path(kind).stat().st_size < 64_000
        assert json.loads(tiny_tokenizer_path(kind).read_text())["model"]["type"] in ("BPE", "WordPiece")


def test_training_is_deterministic_on_a_small_text():
    spec = importlib.util.spec_from_file_location("build_tiny_tokenizers", REPO_ROOT / "scripts" / "build_tiny_tokenizers.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    from workbench.corpora import load_corpus

    texts = list(load_corpus("default", max_docs=150).docs)
    for train in (builder.train_bpe, builder.train_wordpiece):
        runs = {builder.compact_json(train(texts)) for _ in range(3)}
        assert len(runs) == 1, f"{train.__name__} gave {len(runs)} different results"
