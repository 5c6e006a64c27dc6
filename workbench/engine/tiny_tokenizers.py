"""The two tiny tokenizers shipped for the seeded test models (tiny-llama, tiny-gpt2, tiny-bert).

Both are HF `tokenizers` JSON files under `workbench/engine/assets/`, trained
deterministically by `scripts/build_tiny_tokenizers.py` with a vocabulary of 1024:

- ``"bpe"``: byte-level BPE (GPT-2 style; every byte is in the vocabulary, so no text is
  unknown). ``<|endoftext|>`` (id 0) is bos, eos, pad and unk. No special tokens are
  added when encoding; the caller prepends BOS if it wants one.
- ``"wordpiece"``: lower-casing BERT WordPiece with ``[PAD] [UNK] [CLS] [SEP] [MASK]``
  (ids 0-4); encoding adds ``[CLS] ... [SEP]`` (and ``[CLS] A [SEP] B [SEP]`` for pairs,
  with token_type_ids 0/1).

Padding is on the right for both.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from workbench.errors import UnknownNameError

if TYPE_CHECKING:  # transformers is imported lazily: `import workbench.engine...` stays light
    from transformers import PreTrainedTokenizerFast

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

TINY_TOKENIZER_FILES = {"bpe": "tiny-bpe.json", "wordpiece": "tiny-wordpiece.json"}

# Special-token roles per kind, as PreTrainedTokenizerFast keyword arguments.
_SPECIAL_TOKENS = {
    "bpe": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"),
    "wordpiece": dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"),
}
# BERT models take token_type_ids (segment A = 0, B = 1); the GPT-style models do not.
_MODEL_INPUT_NAMES = {
    "bpe": ["input_ids", "attention_mask"],
    "wordpiece": ["input_ids", "token_type_ids", "attention_mask"],
}


def tiny_tokenizer_path(kind: str) -> Path:
    """The JSON file of a tiny tokenizer kind ("bpe" or "wordpiece")."""
    if kind not in TINY_TOKENIZER_FILES:
        raise UnknownNameError("tiny tokenizer", kind, sorted(TINY_TOKENIZER_FILES))
    return ASSETS_DIR / TINY_TOKENIZER_FILES[kind]


@lru_cache(maxsize=None)
def _tokenizer_json(kind: str) -> str:
    return tiny_tokenizer_path(kind).read_text(encoding="utf-8")


def load_tiny_tokenizer(kind: Literal["bpe", "wordpiece"]) -> "PreTrainedTokenizerFast":
    """A fresh `transformers` fast tokenizer for a tiny model, special tokens set, padding right.

    Each call returns a new object (callers may change settings such as padding_side
    without affecting others); the JSON is read from disk once.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tokenizer_json(kind))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
        model_input_names=_MODEL_INPUT_NAMES[kind],
        **_SPECIAL_TOKENS[kind],
    )
    tokenizer.name_or_path = f"tiny-{kind}"
    return tokenizer
