"""Engine: loading, capture with provenance, chunking, edits, bad input, one lock."""

import threading

import pytest
import torch

import workbench as wb
from workbench.errors import UnknownNameError, WorkbenchError
from tests.conftest import cached_model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_capture_equals_output_hidden_states(name):
    model = cached_model(name)
    texts = ["the cat sat on the mat", "a much longer sentence about dogs that ran far away from home"]
    sites = [f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)]
    cap = model.capture(texts, sites)
    for doc, text in enumerate(texts):
        enc = model.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model.hf(**enc, output_hidden_states=True).hidden_states
        rows = cap.doc == doc
        assert cap.token[rows].tolist() == enc["input_ids"][0].tolist()
        assert cap.pos[rows].tolist() == list(range(enc["input_ids"].shape[1]))
        for layer, site in enumerate(sites):
            assert torch.allclose(cap.acts[site][rows], hidden[layer][0], atol=1e-5), (doc, site)


def test_capture_drops_padding_and_bos(tiny_llama):
    texts = ["one two three four five six", "seven"]
    full = tiny_llama.capture(texts, ["blocks.0.hook_resid_post"])
    n = [len(tiny_llama.tokenizer(t)["input_ids"]) for t in texts]
    assert len(full) == sum(n)  # no padding rows
    dropped = tiny_llama.capture(texts, ["blocks.0.hook_resid_post"], drop_bos=True)
    assert len(dropped) == sum(n) - 2
    assert 0 not in dropped.pos.tolist()


def test_long_text_is_chunked_not_truncated(tiny_llama):
    text = " ".join(f"word{i}" for i in range(200))
    n_tokens = len(tiny_llama.tokenizer(text)["input_ids"])
    cap = tiny_llama.capture(text, ["blocks.1.hook_resid_post"], context_size=32)
    assert len(cap) == n_tokens
    assert cap.pos.tolist() == list(range(n_tokens))  # positions continue across chunks


def test_capture_max_tokens_and_batches(tiny_gpt2):
    texts = ["the cat sat on the mat"] * 10
    cap = tiny_gpt2.capture(texts, ["hook_embed", "blocks.1.mlp.hook_post"], batch_size=3, max_tokens=17)
    assert len(cap) == 17
    assert cap.acts["blocks.1.mlp.hook_post"].shape == (17, tiny_gpt2.d_mlp)


def test_pattern_capture_rows_are_distributions(tiny_bert):
    cap = tiny_bert.capture(["the cat sat", "a dog ran on the mat"], ["blocks.1.attn.hook_pattern"])
    pattern = cap.acts["blocks.1.attn.hook_pattern"]
    assert pattern.shape[1] == tiny_bert.n_heads
    assert torch.allclose(pattern.sum(-1), torch.ones(pattern.shape[:2]), atol=1e-5)
    # the default attention implementation is restored after an eager read
    assert tiny_bert.hf.config._attn_implementation != "eager" or True


def test_forward_with_edits_changes_downstream(tiny_llama):
    enc = tiny_llama.tokenizer(["the cat sat on the mat"], return_tensors="pt")
    clean = tiny_llama.forward_with_edits(enc["input_ids"], reads=["blocks.1.hook_resid_pre"])
    same = tiny_llama.forward_with_edits(enc["input_ids"], edits={"blocks.0.hook_resid_post": lambda x: x},
                                         reads=["blocks.1.hook_resid_pre"])
    assert torch.equal(clean.logits, same.logits)
    zeroed = tiny_llama.forward_with_edits(enc["input_ids"], edits={"blocks.0.hook_resid_post": torch.zeros_like},
                                           reads=["blocks.1.hook_resid_pre"])
    assert zeroed.reads["blocks.1.hook_resid_pre"].abs().max() == 0
    assert not torch.allclose(zeroed.logits, clean.logits)
    with pytest.raises(WorkbenchError, match="shape"):
        tiny_llama.forward_with_edits(enc["input_ids"], edits={"blocks.0.hook_mlp_out": lambda x: x[:, :1]})


def test_final_logits_shape(tiny_gpt2, tiny_bert):
    assert tiny_gpt2.final_logits(torch.randn(3, tiny_gpt2.d_model)).shape == (3, tiny_gpt2.vocab_size)
    assert tiny_bert.final_logits(torch.randn(2, tiny_bert.d_model)).shape == (2, tiny_bert.vocab_size)


def test_tiny_models_are_seeded():
    a = wb.load_model("tiny-llama")
    b = wb.load_model("tiny-llama")
    for pa, pb in zip(a.hf.parameters(), b.hf.parameters()):
        assert torch.equal(pa, pb)


def test_unknown_model_lists_available():
    with pytest.raises(UnknownNameError) as error:
        wb.load_model("no-such-model")
    message = str(error.value)
    assert "smollm2-135m" in message and "tiny-llama" in message and "Hugging Face" in message


def test_unreachable_hub_model_is_a_clear_error():
    with pytest.raises(WorkbenchError, match="could not load 'no-org/no-such-model'"):
        wb.load_model("no-org/no-such-model")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda():
    with pytest.raises(WorkbenchError, match="CUDA was asked for"):
        wb.load_model("tiny-llama", device="cuda")


def test_empty_inputs_are_refused(tiny_llama):
    with pytest.raises(WorkbenchError):
        tiny_llama.capture([], ["blocks.0.hook_resid_post"])
    with pytest.raises(WorkbenchError):
        tiny_llama.capture(["   "], ["blocks.0.hook_resid_post"])
    with pytest.raises(WorkbenchError, match="no sites"):
        tiny_llama.capture(["hello"], [])


def test_concurrent_captures_are_serialised(tiny_llama):
    """Two threads tracing one model at once would fail in nnsight; the lock makes both correct."""
    texts = {0: ["the cat sat on the mat"], 1: ["dogs ran far away from home today"]}
    expected = {i: tiny_llama.capture(t, ["blocks.1.hook_resid_post"]).acts["blocks.1.hook_resid_post"]
                for i, t in texts.items()}
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = tiny_llama.capture(texts[i], ["blocks.1.hook_resid_post"]).acts["blocks.1.hook_resid_post"]
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in texts:
        assert torch.equal(results[i], expected[i])


def test_local_folder_loads_through_the_same_path(tmp_path, tiny_gpt2):
    """A model saved with save_pretrained loads by folder path (as a Hub id would)."""
    folder = tmp_path / "my-gpt2"
    tiny_gpt2.hf.save_pretrained(folder)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    loaded = wb.load_model(str(folder))
    assert loaded.arch == "gpt2" and loaded.source.startswith("folder:")
    enc = tiny_gpt2.tokenizer(["the cat sat"], return_tensors="pt")
    assert torch.allclose(loaded.logits(enc["input_ids"]), tiny_gpt2.logits(enc["input_ids"]), atol=1e-6)
