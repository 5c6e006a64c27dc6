"""Invariants of every SAE architecture (tiny seeded dictionaries, synthetic tensors)."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import UnknownNameError, WorkbenchError
from workbench.sae import ARCHITECTURE_NAMES, SaeConfig, create_sae

D_IN, D_SAE, K = 16, 48, 4


def make(arch: str, **overrides):
    needs_k = arch not in ("relu", "jumprelu")
    overrides.setdefault("k", K if needs_k else None)
    cfg = SaeConfig(arch, D_IN, D_SAE, **overrides)
    return create_sae(cfg, seed=1)


@pytest.fixture
def x():
    return torch.randn(64, D_IN, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ["topk", "abstopk", "hierarchical_topk"])
def test_topk_family_l0_is_exactly_k(arch, x):
    sae = make(arch)
    codes = sae.encode(x)
    assert codes.shape == (64, D_SAE)
    assert torch.equal((codes != 0).sum(-1), torch.full((64,), K))


def test_abstopk_keeps_negative_codes(x):
    codes = make("abstopk").encode(x)
    assert (codes < 0).any(), "AbsTopK must keep the sign of large negative pre-activations"
    # and picks by magnitude: every kept |code| >= every dropped |pre|
    pre = make("abstopk").pre_acts(x)
    kept = codes != 0
    assert (pre.abs()[kept].view(64, K).min(-1).values >= pre.abs().masked_fill(kept, 0).max(-1).values - 1e-6).all()


def test_topk_codes_are_nonnegative_and_match_pre(x):
    sae = make("topk")
    codes, pre = sae.encode(x), sae.pre_acts(x)
    assert (codes >= 0).all()
    kept = codes != 0
    assert torch.allclose(codes[kept], pre[kept])


def test_batchtopk_mean_l0_is_k_while_training(x):
    sae = make("batchtopk").train()
    out = sae.training_step(x)
    codes = sae.encode(x)
    assert float(out.l0) == pytest.approx(K)
    assert (codes != 0).sum().item() == K * x.shape[0]
    per_token = (codes != 0).sum(-1)
    assert per_token.min() != per_token.max(), "the batch budget should spread unevenly over tokens"


def test_batchtopk_uses_threshold_at_inference(x):
    sae = make("batchtopk")
    sae.train()
    for _ in range(3):
        sae.observe(sae.training_step(x).stats)
    theta = float(sae.threshold)
    assert theta > 0
    sae.eval()
    codes, pre = sae.encode(x), sae.pre_acts(x)
    assert torch.equal(codes != 0, pre > theta)


def test_jumprelu_codes_are_zero_below_threshold(x):
    sae = make("jumprelu", jumprelu_init_threshold=0.3)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    codes, pre = sae.encode(x), sae.pre_acts(x)
    below = pre <= sae.threshold
    assert (codes[below] == 0).all()
    assert torch.allclose(codes[~below], pre[~below])
    assert (codes[~below] > 0).all()


def test_jumprelu_threshold_gets_straight_through_gradient(x):
    sae = make("jumprelu", jumprelu_init_threshold=0.5, jumprelu_bandwidth=1.0)
    sae.training_step(x).loss.backward()
    assert sae.threshold.grad is not None and sae.threshold.grad.abs().sum() > 0


def test_mp_residual_norm_never_increases(x):
    sae = make("mp", k=8)
    norms: list[torch.Tensor] = []
    _, residual = sae.pursue(x, 8, residual_norms=norms)
    stacked = torch.stack(norms)  # [steps + 1, N]
    assert stacked.shape == (9, 64)
    assert (stacked[1:] <= stacked[:-1] + 1e-5).all()
    assert (stacked[-1] < stacked[0]).all()
    # x_hat = x - residual equals the decoded codes
    codes = sae.encode(x, k=8)
    assert torch.allclose(sae.decode(codes), x - residual, atol=1e-5)


def test_hierarchical_budgets_are_prefixes_of_the_largest(x):
    sae = make("hierarchical_topk", k=8, k_budgets=(2, 4, 8))
    full = sae.encode(x)
    for budget in (1, 2, 4, 8):
        codes = sae.encode(x, k=budget)
        assert torch.equal((codes != 0).sum(-1), torch.full((64,), budget))
        assert ((codes != 0) <= (full != 0)).all(), "a smaller budget keeps a subset of the latents"
    with pytest.raises(WorkbenchError, match="budget"):
        sae.encode(x, k=9)


@pytest.mark.parametrize("arch", ARCHITECTURE_NAMES)
def test_training_step_gives_gradients_and_bookkeeping(arch, x):
    sae = make(arch).train()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:20] = True
    out = sae.training_step(x, dead_mask=dead)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert out.x_hat.shape == x.shape
    assert out.fired.shape == (D_SAE,) and out.fired.dtype == torch.bool and out.fired.any()
    grads = [p.grad for p in sae.parameters()]
    assert all(g is not None for g in grads)
    if arch not in ("relu", "jumprelu"):
        assert "auxk" in out.terms, "dead latents should get the AuxK loss"
    # the forward used for inference agrees with training's reconstruction (same rule)
    if arch not in ("batchtopk", "matryoshka"):
        sae.eval()
        assert torch.allclose(sae(x), out.x_hat, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURE_NAMES)
def test_decoder_rows_stay_unit_norm_and_parallel_grad_is_removed(arch, x):
    sae = make(arch)
    sae.training_step(x).loss.backward()
    sae.remove_parallel_grad()
    along_rows = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert along_rows.abs().max() < 1e-4
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    version = sae.W_dec._version
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)
    # The renormalisation is seen as a change of W_dec (not written through .data), so a
    # packed copy of the old decoder (workbench.kernels.packed_decoders) is never reused.
    assert sae.W_dec._version > version


@pytest.mark.parametrize("arch", ARCHITECTURE_NAMES)
def test_fold_scaling_makes_raw_inputs_work(arch, x):
    """Training on x * s then folding s gives the same reconstruction of raw x (divided back)."""
    sae = make(arch).eval()
    scale = 7.5
    if arch in ("batchtopk", "matryoshka"):
        sae.threshold.fill_(0.2)
    expected = sae(x * scale) / scale
    codes_scaled = sae.encode(x * scale)
    sae.fold_scaling(scale, scale)
    assert torch.allclose(sae(x), expected, atol=1e-4)
    assert torch.allclose(sae.encode(x), codes_scaled / scale, atol=1e-4)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)


def test_transcoder_predicts_another_width(x):
    for arch in ("topk", "relu"):
        sae = create_sae(SaeConfig(arch, D_IN, D_SAE, k=K if arch == "topk" else None, transcoder=True, d_out=10))
        y = torch.randn(64, 10)
        out = sae.training_step(x, y)
        assert out.x_hat.shape == (64, 10)
        assert sae(x).shape == (64, 10)
        assert sae.cfg.apply_b_dec_to_input is False
        sae.initialize_from_data(x, y)
        assert torch.allclose(sae.b_dec, y.mean(0), atol=1e-6)


def test_leading_dims_are_kept():
    sae = make("topk")
    x = torch.randn(2, 5, D_IN)
    assert sae.encode(x).shape == (2, 5, D_SAE)
    assert sae(x).shape == (2, 5, D_IN)


# ----------------------------------------------------------------- bad configs
def test_unknown_architecture_lists_the_known():
    with pytest.raises(UnknownNameError) as info:
        SaeConfig("gated", 8, 16)
    for name in ARCHITECTURE_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("k", [0, -1, 17])
def test_k_out_of_range(k):
    with pytest.raises(WorkbenchError, match="1 <= k <= d_sae=16"):
        SaeConfig("topk", 8, 16, k=k)


def test_k_required_for_topk_and_width_mismatch_named():
    with pytest.raises(WorkbenchError, match="needs k"):
        SaeConfig("topk", 8, 16)
    sae = make("topk")
    with pytest.raises(WorkbenchError, match="width 7 but this SAE expects 16"):
        sae.encode(torch.randn(3, 7))


def test_cross_field_checks():
    with pytest.raises(WorkbenchError, match="last of matryoshka_widths"):
        SaeConfig("matryoshka", 8, 16, k=2, matryoshka_widths=(4, 8))
    with pytest.raises(WorkbenchError, match="last of k_budgets"):
        SaeConfig("hierarchical_topk", 8, 16, k=4, k_budgets=(1, 2))
    with pytest.raises(WorkbenchError, match="transcoder"):
        SaeConfig("mp", 8, 16, k=2, transcoder=True)
    with pytest.raises(WorkbenchError, match="transcoder=True"):
        SaeConfig("topk", 8, 16, k=2, d_out=5)
    assert SaeConfig("matryoshka", 64, 64, k=2).matryoshka_widths == (4, 16, 64)
    assert SaeConfig("hierarchical_topk", 8, 64, k=32).k_budgets == (4, 8, 16, 32)


def test_batchtopk_threshold_calibration_gives_mean_l0_k(x):
    sae = make("batchtopk")
    theta = sae.calibrate_threshold(x)
    assert theta > 0
    sae.eval()
    mean_l0 = float((sae.encode(x) != 0).sum(-1).float().mean())
    assert mean_l0 == pytest.approx(K, abs=1.5 / x.shape[0])  # the smallest selected value sits at theta
