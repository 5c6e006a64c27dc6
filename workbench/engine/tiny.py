"""Seeded random tiny models for tests: `tiny-llama`, `tiny-gpt2`, `tiny-bert`.

Each is built from a config (2 layers, width 64) with fixed seeds, so two builds
give identical weights, and uses a small real tokenizer trained on the shipped
corpora (`workbench/engine/assets/`), so text goes in and out as with a real
model. Building one takes milliseconds and downloads nothing.
"""

from __future__ import annotations

import torch

TINY_SEED = 1234
TINY_WIDTH = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_MLP = 128
TINY_CONTEXT = 256


def _seeded(build):
    """Run a constructor under a fixed seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return build()


def build_tiny(name: str):
    """Return (hf_model, tokenizer) for one of the tiny model names."""
    from workbench.engine.tiny_tokenizers import load_tiny_tokenizer

    if name == "tiny-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = load_tiny_tokenizer("bpe")
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_WIDTH,
            intermediate_size=TINY_MLP,
            num_hidden_layers=TINY_LAYERS,
            num_attention_heads=TINY_HEADS,
            num_key_value_heads=TINY_HEADS // 2,
            max_position_embeddings=TINY_CONTEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        model = _seeded(lambda: LlamaForCausalLM(config))
    elif name == "tiny-gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        tokenizer = load_tiny_tokenizer("bpe")
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=TINY_WIDTH,
            n_layer=TINY_LAYERS,
            n_head=TINY_HEADS,
            n_inner=TINY_MLP,
            n_positions=TINY_CONTEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = _seeded(lambda: GPT2LMHeadModel(config))
    elif name == "tiny-bert":
        from transformers import BertConfig, BertForMaskedLM

        tokenizer = load_tiny_tokenizer("wordpiece")
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_WIDTH,
            num_hidden_layers=TINY_LAYERS,
            num_attention_heads=TINY_HEADS,
            intermediate_size=TINY_MLP,
            max_position_embeddings=TINY_CONTEXT,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = _seeded(lambda: BertForMaskedLM(config))
    else:
        raise KeyError(name)
    return model.eval(), tokenizer
