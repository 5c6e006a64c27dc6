"""The trainer on synthetic data: recovery of a known dictionary, sweeps, exact resume,
NaN handling, schedules, and the multi-level architectures after training."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.sae import SaeConfig
from workbench.sae.checkpoint import latest_checkpoint, load_checkpoint
from workbench.sae.loading import load_sae
from workbench.sae.sources import TensorSource
from workbench.sae.train import NonFiniteError, TrainConfig, train_saes


def synthetic(n: int, d: int = 32, atoms: int = 64, active: int = 3, seed: int = 0):
    seed += 12345  # never the seed of an SAE initialisation (seed 0 would give W_dec == D)
    """x = sparse non-negative codes @ a random unit-norm dictionary D [atoms, d] + small noise."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(atoms, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, atoms, generator=g).argsort(dim=1)[:, :active]
    coef = torch.rand(n, active, generator=g) * 2 + 0.5
    codes = torch.zeros(n, atoms).scatter(1, idx, coef)
    return codes @ D + 0.01 * torch.randn(n, d, generator=g), D


@pytest.fixture(scope="module")
def data():
    return synthetic(20000)


def quick(steps: int, batch: int = 256, **kw) -> TrainConfig:
    return TrainConfig(total_tokens=steps * batch, batch_size=batch, progress=False, init_tokens=2048, **kw)


def test_topk_recovers_a_known_sparse_dictionary(data):
    x, D = data
    cfg = SaeConfig("topk", 32, 128, k=3, site="x")
    result = train_saes(cfg, quick(300, lr=1e-2), TensorSource({"x": x}))
    sae = result.saes[""]
    learned = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    max_cos = (D @ learned.T).max(dim=1).values
    assert max_cos.mean() >= 0.9, f"mean max cosine {max_cos.mean():.3f}"
    assert result.history[""][-1]["fvu"] < 0.15
    assert result.steps == 300 and result.tokens == 300 * 256


def test_sweep_of_several_saes_from_one_stream(data, tmp_path):
    x, _ = data
    configs = [SaeConfig("topk", 32, 64, k=2, site="x"), SaeConfig("topk", 32, 64, k=6, site="x"),
               SaeConfig("relu", 32, 64, site="x", l1_coefficient=0.3)]
    result = train_saes(configs, quick(120, lr=1e-2, log_every=20), TensorSource({"x": x}), out_dir=tmp_path)
    names = list(result.saes)
    assert names == ["00_topk_x_64_k2", "01_topk_x_64_k6", "02_relu_x_64"]
    final = {name: rows[-1] for name, rows in result.history.items()}
    assert final[names[0]]["l0"] == 2 and final[names[1]]["l0"] == 6
    assert final[names[1]]["fvu"] < final[names[0]]["fvu"], "more latents per token reconstruct better"
    assert len(result.history[names[2]]) == 6  # 120 steps / log_every 20
    for name in names:
        loaded = load_sae(tmp_path / name)
        assert torch.allclose(loaded(x[:50]), result.saes[name](x[:50]), atol=1e-5)
    history = json.loads((tmp_path / "train_history.json").read_text())
    assert set(history) == set(names)


def test_saved_sae_works_on_raw_activations(tmp_path):
    """Training normalises inputs; the saved file must reconstruct the raw, unscaled data."""
    x, _ = synthetic(8000, seed=2)
    x = x * 40.0 + 5.0  # far from unit scale, off-centre
    result = train_saes(SaeConfig("topk", 32, 64, k=4, site="x"), quick(150, lr=1e-2), TensorSource({"x": x}),
                        out_dir=tmp_path)
    sae = load_sae(tmp_path)
    scale = result.saes[""].metadata["training"]["scale_in"]
    assert scale == pytest.approx(32**0.5 / float(x.norm(dim=1).mean()), rel=0.05)
    with torch.no_grad():
        x_hat = sae(x)
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.2
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-4)


class Interrupting(TensorSource):
    """A source that raises KeyboardInterrupt when batch `at` is requested (a killed run)."""

    def __init__(self, tensors, at: int):
        super().__init__(tensors)
        self.at = at

    def batches(self, batch_size, *, seed=0, start_step=0, device=None):
        for i, batch in enumerate(super().batches(batch_size, seed=seed, start_step=start_step, device=device)):
            if start_step + i == self.at:
                raise KeyboardInterrupt
            yield batch


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_resume_ends_with_the_same_weights(arch, data, tmp_path):
    x, _ = data
    cfg = SaeConfig(arch, 32, 48, k=3, site="x")
    tc = quick(30, batch=128, checkpoint_every=10, dead_window_tokens=256)
    straight = train_saes(cfg, tc, TensorSource({"x": x}), out_dir=tmp_path / "a").saes[""]

    with pytest.raises(KeyboardInterrupt):
        train_saes(cfg, tc, Interrupting({"x": x}, at=17), out_dir=tmp_path / "b")
    assert latest_checkpoint(tmp_path / "b")[0] == 10
    with pytest.raises(WorkbenchError, match="--resume"):
        train_saes(cfg, tc, TensorSource({"x": x}), out_dir=tmp_path / "b")
    resumed = train_saes(cfg, tc, TensorSource({"x": x}), out_dir=tmp_path / "b", resume=True).saes[""]
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), f"{name} differs after resume"
    with pytest.raises(WorkbenchError, match="different training settings"):
        train_saes(cfg, quick(30, batch=128, checkpoint_every=10, lr=1e-2), TensorSource({"x": x}),
                   out_dir=tmp_path / "b", resume=True)


def test_nan_in_activations_stops_with_the_step_and_keeps_a_good_checkpoint(data, tmp_path):
    x, _ = data
    x = x[:4096].clone()
    x[1234, 5] = float("nan")
    cfg = SaeConfig("topk", 32, 48, k=3, site="x")
    tc = TrainConfig(total_tokens=64 * 100, batch_size=64, checkpoint_every=5, progress=False, init_tokens=64)
    source = TensorSource({"x": x})
    # which batch holds row 1234: the stream is a pure function of the seed
    bad_step = next(i for i, b in enumerate(source.batches(64, seed=0)) if not torch.isfinite(b["x"]).all())
    with pytest.raises(NonFiniteError) as info:
        train_saes(cfg, tc, source, out_dir=tmp_path)
    assert info.value.step == bad_step
    assert f"step {bad_step}" in str(info.value)
    step, path = latest_checkpoint(tmp_path)
    assert step == bad_step and info.value.checkpoint == path
    state = load_checkpoint(path)
    for tensor in state["runs"][0]["sae"].values():
        assert torch.isfinite(tensor.float()).all()


def test_lr_schedule_warms_up_and_decays():
    tc = TrainConfig(total_tokens=100 * 10, batch_size=10, lr_warmup_steps=10, lr_decay_start=0.5)
    values = [tc.lr_multiplier(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == 1.0 and values[49] == 1.0
    assert values[99] == pytest.approx(0.02, abs=0.01)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_bad_training_inputs(data):
    x, _ = data
    with pytest.raises(WorkbenchError, match="d_in mismatch"):
        train_saes(SaeConfig("topk", 16, 32, k=2, site="x"), quick(2), TensorSource({"x": x}))
    with pytest.raises(WorkbenchError, match="unknown site"):
        train_saes(SaeConfig("topk", 32, 32, k=2, site="y"), quick(2), TensorSource({"x": x}))
    with pytest.raises(WorkbenchError, match="less than one batch"):
        TrainConfig(total_tokens=10, batch_size=64)


def test_transcoder_learns_a_sparse_map(tmp_path):
    g = torch.Generator().manual_seed(9)
    x, _ = synthetic(12000, seed=3)
    A = torch.randn(32, 20, generator=g)
    y = torch.relu(x) @ A
    cfg = SaeConfig("topk", 32, 64, k=6, transcoder=True, d_out=20, site="in", site_out="out")
    result = train_saes(cfg, quick(250, lr=1e-2), TensorSource({"in": x, "out": y}), out_dir=tmp_path)
    sae = load_sae(tmp_path)
    with torch.no_grad():
        fvu = float((y - sae(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert sae.cfg.transcoder and fvu < 0.35, fvu
    assert result.history[""][-1]["fvu"] < result.history[""][0]["fvu"]


def _prefix_errors(sae, x, prefixes, use_budget):
    errors = []
    with torch.no_grad():
        for p in prefixes:
            x_hat = sae(x, k=p) if use_budget else sae.forward_prefix(x, p)
            errors.append(float((x - x_hat).pow(2).sum(-1).mean()))
    return errors


def test_matryoshka_and_hierarchical_errors_fall_with_prefix_and_budget(data):
    x, _ = data
    matryoshka = SaeConfig("matryoshka", 32, 64, k=3, matryoshka_widths=(8, 24, 64), site="x")
    hierarchical = SaeConfig("hierarchical_topk", 32, 64, k=8, k_budgets=(1, 2, 4, 8), site="x")
    result = train_saes([matryoshka, hierarchical], quick(250, lr=1e-2), TensorSource({"x": x}))
    m, h = result.saes.values()
    held_out = synthetic(2000, seed=0)[0][-1000:]
    m_err = _prefix_errors(m, held_out, (8, 24, 64), use_budget=False)
    h_err = _prefix_errors(h, held_out, (1, 2, 4, 8), use_budget=True)
    assert all(a >= b for a, b in zip(m_err, m_err[1:])), m_err
    assert all(a >= b for a, b in zip(h_err, h_err[1:])), h_err
    assert m_err[-1] < 0.5 * m_err[0] and h_err[-1] < 0.5 * h_err[0]
