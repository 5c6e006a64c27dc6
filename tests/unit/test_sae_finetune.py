"""KL fine-tuning of a trained SAE spliced into a real (tiny, seeded) model."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.sae import SaeConfig
from workbench.sae.evals import downstream_metrics
from workbench.sae.registry import create_sae
from workbench.sae.finetune import FinetuneConfig, finetune_summary, kl_finetune, spliced_site
from workbench.sae.sources import TensorSource
from workbench.sae.train import TrainConfig, train_saes

SITE = "blocks.1.hook_resid_post"


def rough_sae(model, tokens, architecture: str, k: int):
    """(a deliberately rough SAE: 20 steps, so that the splice costs a visible KL, its training
    rows [n_ctx * (T - 1), d]: position 0 dropped)."""
    with torch.no_grad():
        acts = model.read_sites(tokens, torch.ones_like(tokens), [SITE])[SITE][:, 1:]
    rows = acts.reshape(-1, acts.shape[-1]).float()
    cfg = SaeConfig(architecture, model.d_model, 4 * model.d_model, k=k, site=SITE)
    tc = TrainConfig(total_tokens=20 * 256, batch_size=256, lr=3e-3, progress=False, init_tokens=1024)
    return train_saes(cfg, tc, TensorSource({SITE: rows})).saes[""], rows


@pytest.fixture(scope="module")
def setup(tiny_llama):
    model = tiny_llama
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, model.vocab_size, (96, 24), generator=g)
    sae, _ = rough_sae(model, tokens, "topk", k=2)
    return model, sae, tokens


def test_kl_finetune_lowers_the_spliced_kl_and_leaves_the_model_alone(setup):
    model, sae, tokens = setup
    # A random tiny model on random tokens has nothing to generalise, so the check is on the
    # fine-tune's own contexts (held-out gains are measured on SmolLM2 in the H200 run).
    train, other = tokens[:80], tokens[80:]
    logits_before = model.logits(other[:2]).clone()
    params_before = [p.detach().clone() for p in model.hf.parameters()]
    before = downstream_metrics(sae, model, train)
    result = kl_finetune(sae, model, train, FinetuneConfig(steps=60, batch_contexts=16, lr=3e-3, mse_coef=0.1),
                         progress=False)
    after = downstream_metrics(sae, model, train)
    assert after["kl"] < 0.85 * before["kl"], (before["kl"], after["kl"])
    summary = finetune_summary(result, window=10)
    assert summary["steps"] == 60 and summary["kl_last"] < summary["kl_first"]
    # the decoder stays on the unit sphere, the hook is gone, the model's weights are untouched
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.cfg.d_sae), atol=1e-5)
    assert torch.equal(model.logits(other[:2]), logits_before)
    assert all(torch.equal(p, q) for p, q in zip(model.hf.parameters(), params_before))
    assert all(p.requires_grad for p in model.hf.parameters())


def test_spliced_site_replaces_the_activation_and_removes_its_hook(setup):
    model, _, tokens = setup
    ids = tokens[:2]
    clean = model.logits(ids)
    with spliced_site(model, SITE, lambda act: act * 0):
        zeroed = model.hf(input_ids=ids).logits
    assert not torch.allclose(zeroed, clean)
    assert torch.equal(model.logits(ids), clean)
    with pytest.raises(WorkbenchError, match="attention probabilities"):
        with spliced_site(model, "blocks.0.attn.hook_pattern", lambda act: act):
            pass


def test_bad_input_is_refused_with_a_clear_message(setup, tiny_bert):
    model, sae, tokens = setup
    with pytest.raises(WorkbenchError, match="steps and batch_contexts"):
        FinetuneConfig(steps=0)
    with pytest.raises(WorkbenchError, match="lr must be"):
        FinetuneConfig(lr=-1.0)
    with pytest.raises(WorkbenchError, match=r"\[n_contexts, T\]"):
        kl_finetune(sae, model, tokens[0], FinetuneConfig(steps=1), progress=False)
    with pytest.raises(WorkbenchError, match="not a causal language model"):
        kl_finetune(sae, tiny_bert, tokens, FinetuneConfig(steps=1), progress=False)
    transcoder = SaeConfig("topk", model.d_model, 32, k=2, site=SITE, site_out="blocks.1.hook_mlp_out",
                           transcoder=True, d_out=model.d_model)
    with pytest.raises(WorkbenchError, match="transcoder"):
        kl_finetune(create_sae(transcoder), model, tokens, FinetuneConfig(steps=1), progress=False)


def test_batchtopk_threshold_is_reset_after_the_fine_tune(setup):
    """The fine-tune trains BatchTopK with the batch rule; afterwards the inference threshold
    must again keep k latents per token on average on the calibration contexts."""
    model, _, tokens = setup
    sae, rows = rough_sae(model, tokens, "batchtopk", k=3)
    result = kl_finetune(sae, model, tokens[:80], FinetuneConfig(steps=30, batch_contexts=16, lr=3e-3,
                                                                 calibration_contexts=40), progress=False)
    before, after = result.threshold
    assert after == pytest.approx(float(sae.threshold)) and after != before
    calibration = rows[: 40 * 23]  # the first 40 contexts, position 0 dropped
    l0 = (sae.encode(calibration) != 0).sum(-1).float().mean()
    assert abs(float(l0) - 3.0) < 0.1, float(l0)
