"""Harvest on tiny-llama: a constructed SAE whose latents fire on known tokens (the store must
find exactly those tokens), resuming an interrupted harvest, signed codes, transcoders, every
architecture, UMAP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import cached_model
from tests.unit.features_fixtures import (
    ACT, D_SAE, DEAD, DETECTED, DUPLICATE, check_detector, harvested_tokens, random_sae, small_config,
    token_detector_sae, unused_token,
)
from workbench.errors import WorkbenchError
from workbench.features import FeatureStore, features_by_token, harvest
from workbench.features.harvest import state_dir
from workbench.sae import ARCHITECTURE_NAMES


@pytest.fixture(scope="module")
def model():
    return cached_model("tiny-llama")


@pytest.fixture(scope="module")
def detector(model, tmp_path_factory):
    """(sae, store, tokens [n_ctx, ctx]) of the token-detector SAE harvested once."""
    config = small_config()
    sae = token_detector_sae(model, unused_token(model, config))
    check_detector(model, sae)
    out = tmp_path_factory.mktemp("detector") / "detector.sqlite"
    summary = harvest(model, sae, out, config, sae_name="detector")
    assert summary.complete and out.is_file() and not state_dir(out).exists()
    return sae, FeatureStore(out, model="tiny-llama", sae=sae), harvested_tokens(model, config)


def test_each_latent_fires_exactly_on_its_token(detector, model):
    sae, store, tokens = detector
    counted = tokens[:, 1:]  # position 0 of every context is skipped
    assert store.n_tokens == counted.numel()
    for latent, token in list(DETECTED.items()) + [(DUPLICATE, DETECTED[0])]:
        occurrences = int((counted == token).sum())
        card = store.card(latent)
        assert card.n_fired == occurrences > 0
        assert card.density == pytest.approx(occurrences / counted.numel())
        assert card.max_act == pytest.approx(ACT, abs=1e-5)
        assert card.hist_pos.sum() == occurrences
        assert card.top_token == model.tokenizer.decode([token])
        top = card.examples_of("top")
        assert len(top) == min(6, card.n_contexts)
        for example in card.examples:
            assert example.token_ids[example.peak] == token
            assert example.value == pytest.approx(ACT, abs=1e-3)
            active = np.flatnonzero(example.acts)  # every active window token is the detected token
            assert active.size and all(example.token_ids[i] == token for i in active)
            assert np.allclose(example.acts[active], ACT, atol=1e-3)
            # ... and every occurrence of it is active, but for a context's skipped position 0
            assert example.token_ids.count(token) - active.size in (0, 1)
        # the precomputed token table finds exactly this latent (and its duplicate) first
        rows = features_by_token(store, model.tokenizer.decode([token]))
        expected = {0, DUPLICATE} if token == DETECTED[0] else {latent}
        assert {r["feature"] for r in rows} == expected
        assert all(r["frac"] == pytest.approx(1.0) and r["score"] == pytest.approx(ACT, abs=1e-4) for r in rows)
        assert all(r["specificity"] == pytest.approx(1.0, abs=1e-3) for r in rows)  # they fire on nothing else


def test_examples_point_at_their_corpus_contexts(detector):
    _, store, tokens = detector
    rows = {tuple(r.tolist()) for r in tokens}
    for example in store.contexts(1):
        assert example.kind in ("top", "quantile")
        window = tuple(example.token_ids)
        assert any(window == row[i:i + len(window)] for row in rows for i in range(len(row) - len(window) + 1))
    quantile = store.contexts(1, "quantile")
    top_windows = {tuple(e.token_ids) for e in store.contexts(1, "top")}
    assert quantile and not any(tuple(e.token_ids) in top_windows and e.value > 0.31 for e in quantile)


def test_dead_latent_and_neighbours(detector, model):
    sae, store, _ = detector
    dead = store.card(DEAD)
    assert dead.dead and dead.n_fired == 0 and dead.examples == [] and dead.top_token is None
    assert DEAD not in {r["feature"] for r in store.list_features("density", limit=D_SAE)}
    assert store.card(0).cofire_neighbours[0].index == DUPLICATE
    assert store.card(0).cofire_neighbours[0].score == pytest.approx(1.0)
    assert store.card(0).decoder_neighbours[0].index == DUPLICATE
    assert all(n.index != DEAD for n in store.card(1).cofire_neighbours)  # never co-fires


def test_logit_effects_are_the_decoder_through_the_unembedding(detector, model):
    sae, store, _ = detector
    logits = model.final_logits(sae.W_dec[2:3].float()).float()[0]
    card = store.card(2)
    expected_top = [model.tokenizer.decode([int(i)]) for i in logits.topk(10).indices]
    expected_bottom = [model.tokenizer.decode([int(i)]) for i in (-logits).topk(10).indices]
    assert [t for t, _ in card.top_logits] == expected_top
    assert [t for t, _ in card.bottom_logits] == expected_bottom
    assert card.top_logits[0][1] == pytest.approx(float(logits.max()), rel=1e-2)


def test_interrupted_harvest_resumes_to_the_same_store(model, tmp_path):
    sae = random_sae(model)
    config = small_config(n_tokens=3072)
    whole = harvest(model, sae, tmp_path / "whole.sqlite", config, sae_name="r")
    part = harvest(model, sae, tmp_path / "part.sqlite", config, sae_name="r", stop_after_batches=2)
    assert not part.complete and part.batches_done == 2 and not (tmp_path / "part.sqlite").exists()
    assert (state_dir(tmp_path / "part.sqlite") / "state.pt").is_file()
    with pytest.raises(WorkbenchError, match="other settings"):
        harvest(model, sae, tmp_path / "part.sqlite", small_config(n_tokens=3072, n_top=5), sae_name="r")
    rest = harvest(model, sae, tmp_path / "part.sqlite", config, sae_name="r")
    assert rest.complete and rest.resumed_from == 2 and rest.n_tokens == whole.n_tokens
    a, b = FeatureStore(tmp_path / "whole.sqlite"), FeatureStore(tmp_path / "part.sqlite")
    assert np.array_equal(a.column("density"), b.column("density"))
    for index in range(0, 48, 7):
        ca, cb = a.card(index), b.card(index)
        assert [(e.kind, e.token_ids, e.value) for e in ca.examples] == [(e.kind, e.token_ids, e.value) for e in cb.examples]
        assert [n.index for n in ca.cofire_neighbours] == [n.index for n in cb.cofire_neighbours]
    with pytest.raises(WorkbenchError, match="already exists"):
        harvest(model, sae, tmp_path / "whole.sqlite", config, sae_name="r")


def test_signed_codes_keep_most_negative_contexts(model, tmp_path):
    sae = random_sae(model, "abstopk", d_sae=32, k=6)
    harvest(model, sae, tmp_path / "abs.sqlite", small_config(n_tokens=2048), sae_name="abs")
    store = FeatureStore(tmp_path / "abs.sqlite")
    assert store.signed and store.meta["signed"]
    assert (store.column("min_act") < 0).sum() > 16
    seen_bottom = 0
    for index in range(32):
        card = store.card(index)
        bottom = card.examples_of("bottom")
        values = [e.value for e in bottom]
        assert all(v < 0 for v in values) and values == sorted(values)
        if bottom:
            seen_bottom += 1
            assert bottom[0].value == pytest.approx(card.min_act, rel=1e-3)
            assert bottom[0].acts[bottom[0].peak] == pytest.approx(card.min_act, rel=1e-2)
        assert card.hist_pos.sum() + card.hist_neg.sum() == card.n_fired
    assert seen_bottom > 16


def test_transcoder_and_non_residual_sites(model, tmp_path):
    tc = random_sae(model, "topk", d_sae=24, k=3, site="blocks.0.hook_resid_mid", transcoder=True,
                    site_out="blocks.0.hook_mlp_out")
    harvest(model, tc, tmp_path / "tc.sqlite", small_config(n_tokens=1024), sae_name="tc")
    store = FeatureStore(tmp_path / "tc.sqlite")
    assert store.meta["transcoder"] and store.meta["site_out"] == "blocks.0.hook_mlp_out"
    assert len(store.card(0).top_logits) == 10  # its decoder writes the residual stream
    hidden = random_sae(model, "relu", d_sae=24, site="blocks.0.mlp.hook_post")
    harvest(model, hidden, tmp_path / "mlp.sqlite", small_config(n_tokens=1024), sae_name="mlp")
    card = FeatureStore(tmp_path / "mlp.sqlite").card(0)
    assert card.top_logits == [] and not card.has_logits


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_every_architecture_harvests(model, tmp_path, architecture):
    sae = random_sae(model, architecture, d_sae=16, k=3)
    if architecture in ("batchtopk", "matryoshka"):
        sae.threshold.fill_(0.01)  # an inference threshold, as after training
    summary = harvest(model, sae, tmp_path / "a.sqlite", small_config(n_tokens=512), sae_name=architecture)
    store = FeatureStore(tmp_path / "a.sqlite")
    codes = sae.encode(model.read_sites(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long),
                                        [sae.cfg.site])[sae.cfg.site])
    assert codes.shape[-1] == 16
    fired = store.column("n_fired")
    assert fired.sum() > 0 and summary.stats["d_sae"] == 16
    for index in np.flatnonzero(fired)[:4]:
        card = store.card(int(index))
        top = card.examples_of("top")
        assert top and top[0].value == pytest.approx(card.max_act, rel=1e-3)
        assert [e.value for e in top] == sorted((e.value for e in top), reverse=True)


def test_umap_coordinates_and_meta(model, tmp_path):
    sae = random_sae(model, d_sae=40)
    harvest(model, sae, tmp_path / "u.sqlite", small_config(n_tokens=512, umap=True), sae_name="u",
            command="workbench harvest u")
    store = FeatureStore(tmp_path / "u.sqlite")
    xy = store.umap_map()
    assert xy.shape == (40, 2) and np.isfinite(xy).all() and xy.std(0).min() > 0
    assert store.meta["command"] == "workbench harvest u"
    assert json.loads(json.dumps(store.meta["config"]))["umap"] is True
