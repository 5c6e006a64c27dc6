"""SAEs on real engine activations: train from a store of a tiny model, evaluate with the SAE
spliced into the model, load against a model; a few short checks on SmolLM2 (slow)."""

from __future__ import annotations

import warnings

import pytest
import torch

import workbench as wb
from workbench.errors import UnknownNameError, WorkbenchError
from workbench.sae import SaeConfig, create_sae
from workbench.sae.evals import evaluate_sae
from workbench.sae.io import save_sae
from workbench.sae.loading import load_sae
from workbench.sae.sources import LiveSource, StoreSource, TensorSource
from workbench.sae.train import TrainConfig, train_saes

RESID = "blocks.1.hook_resid_post"
MID, MLP_OUT = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"


@pytest.fixture(scope="module")
def tiny():
    return wb.load_model("tiny-llama")


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A TopK SAE and a TopK transcoder trained from one activation store of tiny-llama."""
    from workbench.engine.store import capture_to_store

    root = tmp_path_factory.mktemp("sae_engine")
    store = capture_to_store(tiny, "default", [RESID, MID, MLP_OUT], root / "store", max_tokens=12000,
                             context_size=32, progress=False)
    configs = [SaeConfig("topk", tiny.d_model, 128, k=8, site=RESID),
               SaeConfig("topk", tiny.d_model, 128, k=8, site=MID, site_out=MLP_OUT, transcoder=True)]
    result = train_saes(configs, TrainConfig(total_tokens=160 * 128, batch_size=128, progress=False),
                        StoreSource(store), out_dir=root / "run", names=["sae", "transcoder"])
    return result, root


def test_store_training_fills_provenance_and_learns(trained):
    result, root = trained
    sae = load_sae(root / "run" / "sae")
    cfg = sae.cfg
    assert (cfg.model_name, cfg.site, cfg.context_size, cfg.dataset) == ("tiny-llama", RESID, 32, "default")
    assert cfg.exclude_position0
    history = result.history["sae"]
    assert history[-1]["fvu"] < 0.7 * history[0]["fvu"]
    assert history[-1]["l0"] == 8


def test_eval_with_splicing(tiny, trained):
    result, _ = trained
    metrics = evaluate_sae(result.saes["sae"], tiny, "default", 1024, context_size=32)
    for key in ("l0", "mse", "fvu", "fvu_typical", "nmse", "cos", "dead_frac", "dense_frac", "ce_clean",
                "ce_spliced", "delta_ce", "ce_loss_recovered", "kl"):
        assert isinstance(metrics[key], float) and metrics[key] == metrics[key], key
    assert metrics["n_tokens"] == 1024 and metrics["l0"] == pytest.approx(8.0)
    assert metrics["fvu"] < 0.6 and metrics["cos"] > 0.7
    # the error term puts back exactly what the SAE missed: clean loss, zero KL
    assert metrics["ce_with_error_term"] == pytest.approx(metrics["ce_clean"], abs=1e-5)
    assert metrics["kl_with_error_term"] < 1e-6
    # the splice really changes the model, ablation more than the SAE does
    assert metrics["kl"] > 0 and metrics["kl_zero_ablation"] > metrics["kl"]
    assert metrics["delta_ce"] == pytest.approx(metrics["ce_spliced"] - metrics["ce_clean"])
    assert metrics["splice_position0"] is False
    assert metrics["n_ce_tokens"] == 34 * 30  # ceil(1024 / 31) contexts x (32 - 2) predictions from positions >= 1
    assert sum(metrics["density_histogram"]["counts"]) == 128


def test_transcoder_eval_reads_one_site_and_replaces_another(tiny, trained):
    result, _ = trained
    metrics = evaluate_sae(result.saes["transcoder"], tiny, "default", 512, context_size=32)
    assert metrics["site"] == MID and metrics["site_out"] == MLP_OUT
    assert metrics["ce_with_error_term"] == pytest.approx(metrics["ce_clean"], abs=1e-5)
    assert metrics["kl"] > 0 and metrics["fvu"] < 1.0


def test_load_sae_checks_the_model(tiny, trained):
    _, root = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good SAE loads silently
        sae = load_sae(root / "run" / "sae", tiny)
    assert sae.load_check["fvu"] < 0.5 and sae.load_check["n_tokens"] > 100
    with pytest.raises(WorkbenchError, match="d_in mismatch"):
        load_sae(root / "run" / "sae", tiny, site="blocks.1.mlp.hook_post")
    with pytest.raises(UnknownNameError):
        load_sae(root / "run" / "sae", tiny, site="blocks.9.hook_resid_post")


def test_load_warns_when_the_sae_explains_little(tiny, tmp_path):
    untrained = create_sae(SaeConfig("topk", tiny.d_model, 128, k=4, site=RESID, model_name="tiny-llama"))
    save_sae(untrained, tmp_path / "untrained")
    with pytest.warns(UserWarning, match="FVU="):
        load_sae(tmp_path / "untrained", tiny)


def test_live_source_is_deterministic_and_resumable(tiny):
    from workbench.corpora import load_corpus, pack_corpus

    packed = pack_corpus(load_corpus("default"), tiny.tokenizer, 32, split="train", max_tokens=32 * 40)
    source = LiveSource(tiny, packed, [RESID], buffer_tokens=31 * 10)
    fresh = source.batches(100, seed=3)
    batches = [next(fresh)[RESID] for _ in range(6)]
    resumed = next(source.batches(100, seed=3, start_step=4))[RESID]
    assert torch.equal(resumed, batches[4])
    assert not torch.equal(batches[0], batches[1])
    result = train_saes(SaeConfig("topk", tiny.d_model, 64, k=4, site=RESID),
                        TrainConfig(total_tokens=20 * 100, batch_size=100, progress=False, init_tokens=300), source)
    assert result.saes[""].cfg.model_name == "tiny-llama" and result.steps == 20


# ---------------------------------------------------------------------- SmolLM2 (slow)
@pytest.fixture(scope="module")
def smol():
    return wb.load_model("smollm2-135m")


@pytest.mark.slow
def test_smollm2_short_training_and_eval(smol, tmp_path):
    from workbench.corpora import load_corpus, pack_corpus

    site = "blocks.15.hook_resid_post"
    packed = pack_corpus(load_corpus("default"), smol.tokenizer, 64, split="train", max_tokens=64 * 100)
    rows = smol.capture(packed, [site], batch_size=16, drop_bos=True).acts[site]  # ~6k tokens, reused for epochs
    source = TensorSource({site: rows}, description={"model_name": "smollm2-135m", "context_size": 64})
    train_saes(SaeConfig("topk", 576, 1024, k=32, site=site),
               TrainConfig(total_tokens=200 * 512, batch_size=512, progress=False, init_tokens=2048),
               source, out_dir=tmp_path / "sae")
    sae = load_sae(tmp_path / "sae", smol)  # the right site: no warning expected, checked below
    metrics = evaluate_sae(sae, smol, "default", 512, context_size=64, ce_tokens=256)
    assert metrics["fvu_typical"] < 0.6
    assert metrics["max_norm_over_median"] > 1.0
    assert metrics["ce_with_error_term"] == pytest.approx(metrics["ce_clean"], abs=1e-3)
    assert 0.0 < metrics["delta_ce"] < metrics["ce_zero_ablation"] - metrics["ce_clean"]
    # the commonest silent mis-load: right width, wrong layer
    with pytest.warns(UserWarning, match="explains little"):
        load_sae(tmp_path / "sae", smol, site="blocks.3.hook_resid_post")


def test_store_source_streams_large_stores_deterministically(trained):
    from workbench.engine.store import ActivationStore

    _, root = trained
    store = ActivationStore.open(root / "store")
    streamed = StoreSource(store, [MID, MLP_OUT], memory_limit_bytes=0)  # force the streaming path
    in_memory = StoreSource(store, [MID, MLP_OUT])
    assert streamed._memory is None and in_memory._memory is not None
    fresh = streamed.batches(1000, seed=5)
    first = [next(fresh) for _ in range(14)]  # 12 batches per epoch: crosses into the second epoch
    resumed = next(streamed.batches(1000, seed=5, start_step=13))
    for site in (MID, MLP_OUT):
        assert torch.equal(resumed[site], first[13][site])
    # rows stay aligned across sites: the MLP output is a function of the same token's mid-residual
    rows = {s: torch.cat([b[s] for b in first[:12]]) for s in (MID, MLP_OUT)}
    order_mid = rows[MID][:, 0].argsort()
    reference = {s: store.read(s) for s in (MID, MLP_OUT)}
    ref_order = reference[MID][:, 0].argsort()
    assert torch.equal(rows[MLP_OUT][order_mid], reference[MLP_OUT][ref_order][: 12000])
