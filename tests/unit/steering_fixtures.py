"""Constructed SAEs for the steering tests (tiny-llama, width 64), built in milliseconds.

`token_sae` has known features: feature f's decoder row is the (unit) input embedding of
TOKENS[f], so its logit-lens top token is that token (tiny-llama ties its embeddings) and
adding it makes the model say that token. The other rows are seeded random unit vectors.
The module fixtures `model` (tiny-llama) and `sae` (its token_sae) are imported by the
steering test modules.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import cached_model

SITE = "blocks.0.hook_resid_post"
D_SAE = 32
K = 8
# token ids whose embeddings become features 0..len-1
TOKENS = (300, 400, 500, 600)


def random_sae(model, site: str = SITE, d_sae: int = D_SAE, k: int = K, seed: int = 0):
    """A TopK SAE with seeded random unit decoder rows (encoder = their transpose)."""
    from workbench.sae import SaeConfig, create_sae

    cfg = SaeConfig("topk", model.site_width(site), d_sae, k=k, site=site, model_name=model.name)
    sae = create_sae(cfg, seed=seed).eval()
    for parameter in sae.parameters():
        parameter.requires_grad_(False)
    return sae


def token_sae(model, site: str = SITE):
    """random_sae whose first features point along the embeddings of TOKENS."""
    sae = random_sae(model, site)
    embed = model.hf.get_input_embeddings().weight.detach().float()
    with torch.no_grad():
        for feature, token in enumerate(TOKENS):
            row = embed[token] / embed[token].norm()
            sae.W_dec[feature] = row
            sae.W_enc[:, feature] = row
    return sae


@pytest.fixture(scope="module")
def model():
    return cached_model("tiny-llama")


@pytest.fixture(scope="module")
def sae(model):
    return token_sae(model)
