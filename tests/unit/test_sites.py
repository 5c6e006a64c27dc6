"""Every site resolves on every tiny model with the right shape."""

import pytest
import torch

from workbench.errors import UnknownNameError, WorkbenchError
from workbench.sites import LAYER_KINDS, check_site, parse_site, site_names
from tests.conftest import cached_model

TINY = ["tiny-llama", "tiny-gpt2", "tiny-bert"]


@pytest.mark.parametrize("name", TINY)
def test_every_site_resolves_with_the_right_shape(name):
    model = cached_model(name)
    enc = model.tokenizer(["the cat sat on the mat", "a dog"], return_tensors="pt", padding=True,
                          padding_side="right")
    batch, tokens = enc["input_ids"].shape
    values = model.read_sites(enc["input_ids"], enc["attention_mask"], model.sites())
    assert set(values) == set(model.sites())
    for site, value in values.items():
        if site.endswith("attn.hook_pattern"):
            assert value.shape == (batch, model.n_heads, tokens, tokens)
            assert torch.allclose(value.sum(-1), torch.ones(batch, model.n_heads, tokens), atol=1e-5)
        else:
            assert value.shape == (batch, tokens, model.site_width(site)), site


@pytest.mark.parametrize("name", TINY)
def test_residual_sites_compose(name):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out (pre-LN models);
    resid_post(l) = resid_pre(l+1) everywhere."""
    model = cached_model(name)
    enc = model.tokenizer(["the cat sat on the mat"], return_tensors="pt")
    v = model.read_sites(enc["input_ids"], enc["attention_mask"], model.sites())
    assert torch.allclose(v["blocks.0.hook_resid_post"], v["blocks.1.hook_resid_pre"])
    if model.arch != "bert":  # BERT is post-LN: the sums pass through LayerNorms
        for layer in range(model.n_layers):
            b = f"blocks.{layer}."
            assert torch.allclose(v[b + "hook_resid_mid"], v[b + "hook_resid_pre"] + v[b + "hook_attn_out"], atol=1e-5)
            assert torch.allclose(v[b + "hook_resid_post"], v[b + "hook_resid_mid"] + v[b + "hook_mlp_out"], atol=1e-5)


def test_site_grammar():
    assert parse_site("blocks.3.mlp.hook_post").layer == 3
    assert parse_site("hook_embed").layer is None
    assert len(site_names(2)) == 1 + 2 * len(LAYER_KINDS)
    with pytest.raises(WorkbenchError):
        parse_site("blocks.x.hook_resid_post")


def test_unknown_site_lists_the_valid_ones(tiny_llama):
    with pytest.raises(UnknownNameError) as error:
        tiny_llama.check_site("blocks.7.hook_resid_post")
    assert "blocks.1.hook_resid_post" in str(error.value) and "layers 0..1" in str(error.value)
    with pytest.raises(UnknownNameError) as error:
        check_site("blocks.0.resid", 2)
    assert "hook_embed" in str(error.value)
