"""The feature store: schema versions, model/SAE checks, bad indices, scores, explanations,
full-text search, text queries, HTML export, and access through the catalog."""

from __future__ import annotations

import re
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from tests.conftest import cached_model
from tests.unit.features_fixtures import random_sae, small_config
from workbench.errors import UnknownNameError, WorkbenchError
from workbench.features import (
    FeatureStore, export_card_html, features_by_token, features_for_text, harvest, open_store, resolve_feature_id,
    search_text,
)

D_SAE = 48


@pytest.fixture(scope="module")
def model():
    return cached_model("tiny-llama")


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    """(sae, path) of a random TopK SAE harvested on 2048 tokens."""
    sae = random_sae(model, d_sae=D_SAE)
    path = tmp_path_factory.mktemp("store") / "rnd.sqlite"
    harvest(model, sae, path, small_config(n_tokens=2048), sae_name="rnd", command="workbench harvest SAE --out X")
    return sae, path


@pytest.fixture()
def store_copy(built, tmp_path):
    path = tmp_path / "copy.sqlite"
    shutil.copy(built[1], path)
    return path


def _set_version(path, version) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    conn.commit()
    conn.close()


def test_schema_version_and_file_errors(store_copy, tmp_path):
    _set_version(store_copy, 0)
    with pytest.raises(WorkbenchError, match=r"schema version 0.*Rebuild it with: workbench harvest SAE --out X"):
        FeatureStore(store_copy)
    _set_version(store_copy, 99)
    with pytest.raises(WorkbenchError, match="newer than this workbench"):
        FeatureStore(store_copy)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 50)
    with pytest.raises(WorkbenchError, match="not a SQLite feature store"):
        FeatureStore(junk)
    with pytest.raises(WorkbenchError, match="no feature store at"):
        FeatureStore(tmp_path / "missing.sqlite")


def test_store_for_another_model_or_sae(built, model):
    sae, path = built
    with pytest.raises(WorkbenchError, match="built for model 'tiny-llama', not 'tiny-gpt2'"):
        FeatureStore(path, model="tiny-gpt2")
    store = FeatureStore(path, model=model, sae=sae)
    with pytest.raises(WorkbenchError, match="another SAE"):
        store.check_sae(random_sae(model, d_sae=D_SAE, seed=1))
    with pytest.raises(WorkbenchError, match="48 latents at blocks.1.hook_resid_post, not 16"):
        store.check_sae(random_sae(model, d_sae=16))


def test_bad_indices(built):
    store = FeatureStore(built[1])
    with pytest.raises(WorkbenchError, match=r"feature 48 is out of range: rnd has 48 latents \(0\.\.47\)"):
        store.card(48)
    with pytest.raises(WorkbenchError, match="out of range"):
        store.contexts(-1)
    with pytest.raises(WorkbenchError, match="must be an integer"):
        store.card("seven")
    with pytest.raises(UnknownNameError, match="example kind"):
        store.contexts(0, kind="best")
    assert store.feature_id(7) == "tiny-llama/blocks.1.hook_resid_post/rnd/7"


def test_scores_sort_and_filter(store_copy):
    store = FeatureStore(store_copy)
    assert store.has_scores() == {"input_score": False, "output_score": False}
    values = np.linspace(0, 1, D_SAE)
    values[[3, 10]] = np.nan
    store.set_scores("output_score", values)
    assert store.has_scores()["output_score"]
    ranked = store.list_features("output_score", limit=D_SAE, include_dead=True)
    assert [r["feature"] for r in ranked] == [i for i in range(D_SAE - 1, -1, -1) if i not in (3, 10)]
    assert np.isnan(store.scores("output_score")[3]) and store.scores("output_score")[5] == pytest.approx(values[5])
    rows = store.list_features("density", require="output_score", limit=D_SAE, include_dead=True)
    assert {r["feature"] for r in rows} == set(range(D_SAE)) - {3, 10}
    with pytest.raises(WorkbenchError, match="one value per latent"):
        store.set_scores("input_score", np.zeros(5))
    with pytest.raises(UnknownNameError, match="score"):
        store.set_scores("loudness", values)
    with pytest.raises(UnknownNameError, match="sort column"):
        store.list_features("loudness")


def test_explanations_and_full_text_search(store_copy):
    store = FeatureStore(store_copy)
    store.add_explanation(3, "Mentions of the Jargon File and hacker slang")
    hits = search_text(store, "jargon slang")
    assert hits[0]["feature"] == 3 and hits[0]["where"] == "explanation" and "Jargon File" in hits[0]["snippet"]
    assert store.card(3).explanations[0]["text"].startswith("Mentions")
    with pytest.raises(WorkbenchError, match="needs some text"):
        store.add_explanation(3, "   ")
    # a word from a latent's top window finds that latent among the context matches
    window = "".join(store.contexts(5, "top")[0].tokens)
    word = max(re.findall(r"[A-Za-z]{4,}", window), key=len)
    hits = search_text(store, word, limit=D_SAE)
    match = [h for h in hits if h["feature"] == 5]
    assert match and match[0]["where"] == "contexts" and word.lower() in match[0]["snippet"].lower()
    with pytest.raises(WorkbenchError, match="the search is empty"):
        search_text(store, "  ")
    with pytest.raises(WorkbenchError, match="no words to search for"):
        search_text(store, "?!")


def test_token_search_errors(built):
    store = FeatureStore(built[1])
    with pytest.raises(WorkbenchError, match="the search is empty"):
        features_by_token(store, "")
    with pytest.raises(WorkbenchError, match="no token 'zzqqxx' occurs"):
        features_by_token(store, "zzqqxx")
    rows = features_by_token(store, "the")
    assert rows and all(r["token"].strip().lower().startswith("the") for r in rows)
    assert [abs(r["score"]) for r in rows] == sorted((abs(r["score"]) for r in rows), reverse=True)


def test_features_for_text_ranks_latents_on_the_text(built, model):
    sae, path = built
    store = FeatureStore(path)
    text = "The quick brown fox jumps over the lazy dog."
    rows, result = features_for_text(store, model, sae, text)
    assert rows and result.codes.shape == (len(result.tokens), D_SAE)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    top = rows[0]
    assert top["token"] == result.tokens[top["position"]] and top["position"] > 0
    assert abs(float(result.codes[top["position"], top["feature"]])) == pytest.approx(abs(top["text_act"]))
    with pytest.raises(WorkbenchError, match="another SAE"):
        features_for_text(store, model, random_sae(model, d_sae=D_SAE, seed=3), text)


def test_export_is_self_contained(built, tmp_path):
    store = FeatureStore(built[1])
    index = int(np.argmax(store.column("n_fired")))
    out = export_card_html(store, index, tmp_path / "card.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and store.feature_id(index) in text
    assert "<script" not in text and "src=" not in text and not re.search(r"href=\"(https?:)?//", text)
    assert "Top activating contexts" in text and text.count('<span class="wbf-tok') > 20
    top = store.contexts(index, "top")[0]
    assert any(t.strip() and t.strip() in text for t in top.tokens)


def test_catalog_access(model, built, tmp_path, monkeypatch):
    from workbench.catalog import get_sae
    from workbench.sae.io import save_sae

    sae, path = built
    root = tmp_path / "saes"
    save_sae(sae, root / "tiny-llama" / "rnd")
    monkeypatch.setenv("WORKBENCH_SAE_DIRS", str(root))
    entry = get_sae("tiny-llama", "rnd")
    with pytest.raises(WorkbenchError, match="has no feature store yet.*workbench harvest"):
        open_store("tiny-llama", "rnd")
    entry.feature_store.parent.mkdir(parents=True)
    shutil.copy(path, entry.feature_store)
    store = open_store("tiny-llama", "rnd")
    assert store.sae_name == "rnd"
    store_again, index = resolve_feature_id("tiny-llama/blocks.1.hook_resid_post/rnd/3")
    assert index == 3 and store_again.d_sae == D_SAE
    with pytest.raises(UnknownNameError, match="site of SAE rnd"):
        resolve_feature_id("tiny-llama/blocks.0.hook_resid_post/rnd/3")
    with pytest.raises(UnknownNameError, match="unknown SAE of tiny-llama 'nope'"):
        resolve_feature_id("tiny-llama/blocks.1.hook_resid_post/nope/3")
    with pytest.raises(WorkbenchError, match="out of range"):
        resolve_feature_id("tiny-llama/blocks.1.hook_resid_post/rnd/4800")
    with pytest.raises(WorkbenchError, match="is not a feature id"):
        resolve_feature_id("rnd/3")


def test_harvest_imports_sidecar_scores(model, tmp_path):
    from workbench.atomic import save_safetensors

    sae = random_sae(model, d_sae=16)
    out = tmp_path / "s.sqlite"
    scores = torch.linspace(0, 1, 16)
    save_safetensors(tmp_path / "s.scores.safetensors", {"output_score": scores, "input_score": torch.zeros(3)})
    summary = harvest(model, sae, out, small_config(n_tokens=512), sae_name="s")
    assert summary.stats["scores_imported"] == ["output_score"]  # the wrong-sized input_score is skipped
    store = FeatureStore(out)
    assert np.allclose(store.scores("output_score"), scores.numpy()) and np.isnan(store.scores("input_score")).all()
