"""Constructed SAEs and small harvests for the feature tests (tiny-llama, built in milliseconds).

`token_detector_sae` is a ReLU SAE on `hook_embed` (where a token's activation is exactly its
embedding row E[t]) whose latent j fires on exactly one token DETECTED[j]:

    W_enc[:, j] = E[t_j] / |E[t_j]|^2,  b_enc[j] = -0.7   =>   pre_j(E[t]) = <E[t], E[t_j]>/|E[t_j]|^2 - 0.7

which is 0.3 for t = t_j and negative for every other token of the tiny vocabulary (their
normalised overlaps stay below 0.5; `check_detector` verifies it over the whole vocabulary).
Latent DUPLICATE copies latent 0's encoder (so it fires on the same tokens) with a decoder
row close to latent 0's; latent DEAD detects a token that never occurs in the harvested text.
"""

from __future__ import annotations

import torch

DETECTED = {0: 267, 1: 12, 2: 284, 3: 302}  # " the", ",", " of", " and" in the tiny BPE vocabulary
DUPLICATE = 4
DEAD = 5
D_SAE = 6
ACT = 0.3
SITE = "hook_embed"
CONTEXT = 64
TOKENS = 4096


def small_config(**changes):
    from workbench.features.harvest import HarvestConfig

    values = dict(n_tokens=TOKENS, context_size=CONTEXT, batch_size=8, n_top=6, n_quantile=4, n_intervals=2,
                  reservoir_size=8, window_before=6, window_after=3, umap=False)
    values.update(changes)
    return HarvestConfig(**values)


def harvested_tokens(model, config) -> torch.Tensor:
    """[n_ctx, ctx] the token ids a harvest with `config` runs over."""
    from workbench.corpora import load_corpus, pack_corpus

    packed = pack_corpus(load_corpus(config.corpus), model.tokenizer, config.context_size, split=config.split,
                         max_tokens=config.n_tokens)
    return packed.tokens


def unused_token(model, config) -> int:
    """A token id (not special) that does not occur at a counted position of the harvest."""
    seen = set(harvested_tokens(model, config)[:, 1:].reshape(-1).tolist())
    for token in range(model.vocab_size - 1, 0, -1):
        if token not in seen:
            return token
    raise AssertionError("every token occurs")


def token_detector_sae(model, dead_token: int):
    from workbench.sae import SaeConfig, create_sae

    cfg = SaeConfig("relu", model.site_width(SITE), D_SAE, site=SITE, model_name=model.name)
    sae = create_sae(cfg, seed=0).eval()
    E = model.hf.get_input_embeddings().weight.detach().float()
    detected = {**DETECTED, DUPLICATE: DETECTED[0], DEAD: dead_token}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_dec.zero_()
        W_dec = torch.randn(D_SAE, cfg.d_in, generator=gen)
        W_dec[DUPLICATE] = W_dec[0] + 0.05 * torch.randn(cfg.d_in, generator=gen)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        for latent, token in detected.items():
            sae.W_enc[:, latent] = E[token] / E[token].norm() ** 2
            sae.b_enc[latent] = -(1.0 - ACT)
    for parameter in sae.parameters():
        parameter.requires_grad_(False)
    return sae


def check_detector(model, sae) -> None:
    """Every latent fires (at ACT) on its own token only, over the whole vocabulary."""
    E = model.hf.get_input_embeddings().weight.detach().float()
    codes = sae.encode(E)
    for latent in range(D_SAE):
        active = torch.nonzero(codes[:, latent]).reshape(-1).tolist()
        assert len(active) == 1, (latent, active)
        assert abs(float(codes[active[0], latent]) - ACT) < 1e-4


def random_sae(model, architecture: str = "topk", d_sae: int = 48, k: int = 4, site: str = "blocks.1.hook_resid_post",
               seed: int = 0, **extra):
    from workbench.sae import SaeConfig, create_sae

    if architecture not in ("topk", "batchtopk", "matryoshka", "abstopk", "hierarchical_topk", "mp"):
        k = None
    cfg = SaeConfig(architecture, model.site_width(site), d_sae, k=k, site=site, model_name=model.name, **extra)
    sae = create_sae(cfg, seed=seed).eval()
    for parameter in sae.parameters():
        parameter.requires_grad_(False)
    return sae
