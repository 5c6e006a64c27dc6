"""The real embedded SmolLM2-135M through the engine (integration tier)."""

import time

import pytest
import torch

import workbench as wb

pytestmark = pytest.mark.slow


def test_capture_equals_plain_forward_hidden_states(smollm2):
    """Same batch, same padding: the capture must equal output_hidden_states to 1e-5."""
    texts = ["The capital of France is Paris.", "Sparse autoencoders find features in activations."]
    layers = [0, 7, 15, 28]
    cap = smollm2.capture(texts, [f"blocks.{l}.hook_resid_post" for l in layers])
    enc = smollm2.tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad():
        hidden = smollm2.hf(**enc, output_hidden_states=True).hidden_states
    real = enc["attention_mask"].bool()
    assert torch.equal(cap.token, enc["input_ids"][real])
    for layer in layers:  # hidden_states[l + 1] is the output of block l (the last one is normed)
        torch.testing.assert_close(cap.acts[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1][real],
                                   atol=1e-5, rtol=1e-5)


def test_traced_logits_and_top_token(smollm2):
    enc = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    logits = smollm2.logits(enc["input_ids"])
    with torch.no_grad():
        plain = smollm2.hf(**enc).logits
    assert torch.allclose(logits, plain, atol=1e-4)
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_cached_load_is_fast(smollm2):
    started = time.perf_counter()
    again = wb.load_model("smollm2-135m", device="cpu")
    assert time.perf_counter() - started < 5.0  # well under a second on an idle machine
    assert again.n_layers == 30 and again.d_model == 576


def test_attention_pattern_on_real_model(smollm2):
    cap = smollm2.capture("The cat sat on the mat.", ["blocks.3.attn.hook_pattern"])
    pattern = cap.acts["blocks.3.attn.hook_pattern"]
    assert pattern.shape[1] == 9
    assert torch.allclose(pattern.sum(-1), torch.ones(pattern.shape[:2]), atol=1e-4)
    # causal: no query attends to a later key
    for query in range(pattern.shape[0]):
        assert pattern[query, :, query + 1:].abs().sum() < 1e-6
    assert smollm2.hf.config._attn_implementation != "eager"
