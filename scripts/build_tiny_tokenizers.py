"""Train the two tiny tokenizers shipped for the seeded test models.

Writes (HF `tokenizers` JSON files, a few tens of KB each):
  workbench/engine/assets/tiny-bpe.json        byte-level BPE, vocab 1024, `<|endoftext|>`
                                               as bos/eos/pad (tiny-llama, tiny-gpt2)
  workbench/engine/assets/tiny-wordpiece.json  lower-cased WordPiece, vocab 1024, [PAD] [UNK]
                                               [CLS] [SEP] [MASK], BERT post-processor (tiny-bert)

Training is deterministic: the texts come in a fixed order and both trainers are
single-pass count-based merges, so a rebuild gives identical files (the script checks
this by training twice with --check).

Training text (--texts):
  default      the shipped `default` corpus (data/corpora, built by scripts/build_corpora.py)
  pydoc-rst    the raw reStructuredText sources of Debian's python3.11-doc, read directly
               (useful before the corpora exist)

Usage:
  .venv/bin/python scripts/build_tiny_tokenizers.py [--texts default] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "workbench" / "engine" / "assets"
PYDOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")

VOCAB_SIZE = 1024
BPE_SPECIAL = "<|endoftext|>"
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# WordPiece needs a closed character alphabet; keeping it to printable ASCII plus the most
# frequent other characters leaves room in 1024 for useful subwords. We pick the alphabet
# ourselves (ties broken by code point): the trainer's own `limit_alphabet` breaks ties
# between equally rare characters in hash order, which made rebuilds differ.
WORDPIECE_ALPHABET_SIZE = 120


def pydoc_rst_texts() -> Iterator[str]:
    """The python3.11-doc `.rst.txt` sources, one string per file, in sorted path order."""
    files = sorted(PYDOC_SOURCES.rglob("*.rst.txt"))
    if not files:
        sys.exit(f"no .rst.txt files under {PYDOC_SOURCES}; install the Debian package python3.11-doc")
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def default_corpus_texts() -> Iterator[str]:
    """The documents of the shipped `default` corpus (all splits), in corpus order."""
    sys.path.insert(0, str(REPO_ROOT))
    from workbench.corpora import load_corpus

    yield from load_corpus("default").docs


def train_bpe(texts: list[str]) -> Tokenizer:
    """A GPT-2 style byte-level BPE: every byte is in the vocabulary, so nothing is unknown."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact (provenance maps tokens back to text).
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BPE_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def wordpiece_alphabet(tok: Tokenizer, texts: list[str]) -> list[str]:
    """Printable ASCII plus the most frequent other characters after normalisation (deterministic)."""
    alphabet = [chr(c) for c in range(33, 127)]
    counts = Counter()
    for text in texts:
        counts.update(tok.normalizer.normalize_str(text))
    extra = sorted((c for c in counts if c not in alphabet and not c.isspace()), key=lambda c: (-counts[c], c))
    return alphabet + extra[: WORDPIECE_ALPHABET_SIZE - len(alphabet)]


def canonical_vocab(vocab: dict[str, int]) -> dict[str, int]:
    """Renumber a trained WordPiece vocabulary in a fixed order.

    The trainer numbers the `##c` continuation characters in hash-map order, so two runs
    give the same tokens under different ids. WordPiece encodes by greedy longest match,
    so ids carry no meaning: specials first, then single characters, `##` characters and
    the learned subwords, each group sorted (training order also ties in hash order).
    """
    specials = [t for t in WORDPIECE_SPECIALS if t in vocab]
    chars = sorted(t for t in vocab if len(t) == 1 and t not in specials)
    continued = sorted(t for t in vocab if len(t) == 3 and t.startswith("##"))
    placed = set(specials) | set(chars) | set(continued)
    learned = sorted(t for t in vocab if t not in placed)
    return {token: i for i, token in enumerate(specials + chars + continued + learned)}


def train_wordpiece(texts: list[str]) -> Tokenizer:
    """A lower-casing BERT WordPiece whose post-processor adds [CLS] ... [SEP] (and pairs)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    alphabet = wordpiece_alphabet(tok, texts)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=WORDPIECE_SPECIALS,
        limit_alphabet=len(alphabet),
        initial_alphabet=alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.model = models.WordPiece(canonical_vocab(tok.get_vocab()), unk_token="[UNK]", max_input_chars_per_word=100)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def compact_json(tok: Tokenizer) -> str:
    """The tokenizer as JSON without indentation (keeps the shipped file small), newline-terminated."""
    return json.dumps(json.loads(tok.to_str()), ensure_ascii=False, separators=(",", ":")) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", choices=["default", "pydoc-rst"], default="default", help="training text (see module docstring)")
    parser.add_argument("--check", action="store_true", help="train twice and fail unless both runs give identical JSON")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT))
    from workbench.atomic import write_text

    texts = list(default_corpus_texts() if args.texts == "default" else pydoc_rst_texts())
    print(f"training text: {args.texts}, {len(texts)} documents, {sum(map(len, texts)):,} chars")
    for name, train in (("tiny-bpe", train_bpe), ("tiny-wordpiece", train_wordpiece)):
        text = compact_json(train(texts))
        if args.check and compact_json(train(texts)) != text:
            sys.exit(f"{name}: two trainings on the same text differ; the output is not deterministic")
        tok = Tokenizer.from_str(text)
        path = ASSETS / f"{name}.json"
        write_text(path, text)
        sample = "The quick brown fox jumps over the lazy dog."
        print(f"{path.relative_to(REPO_ROOT)}: vocab {tok.get_vocab_size()}, {path.stat().st_size / 1024:.1f} KB, "
              f"{len(tok.encode(sample).ids)} tokens for {sample!r}")


if __name__ == "__main__":
    main()
