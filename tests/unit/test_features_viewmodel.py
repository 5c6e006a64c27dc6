"""The Features view-model (no GUI): a registered SAE on tiny-llama, searches, opening cards by
index and by id, try-your-text, bad input turned into messages, and no GUI imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import cached_model
from tests.unit.features_fixtures import DETECTED, check_detector, small_config, token_detector_sae, unused_token
from workbench.features import harvest


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """A FeaturesViewModel over a registered token-detector SAE with its store."""
    from workbench.catalog import get_sae
    from workbench.sae.io import save_sae
    from workbench.viewmodels.features import FeaturesViewModel

    model = cached_model("tiny-llama")
    config = small_config()
    sae = token_detector_sae(model, unused_token(model, config))
    check_detector(model, sae)
    root = tmp_path_factory.mktemp("registry") / "saes"
    save_sae(sae, root / "tiny-llama" / "detector")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_SAE_DIRS", str(root))
        entry = get_sae("tiny-llama", "detector")
        harvest(model, sae, entry.feature_store, config, sae_name="detector")
        yield FeaturesViewModel(model)


def test_opens_the_registered_sae_and_lists_every_latent(vm):
    assert vm.sae_name == "detector" and vm.error == ""
    assert len(vm.results) == 6 and vm.result_kind == "all"
    assert "6 latents of detector at hook_embed (1 dead)" in vm.status
    assert vm.columns()[:2] == ["feature", "top_token_text"]


def test_token_search_then_open_and_try_text(vm):
    vm.search_mode, vm.query = "token", " of"
    assert vm.search() and vm.result_kind == "token"
    assert [r["feature"] for r in vm.results] == [2] and "score" in vm.columns()
    assert vm.open(vm.results[0]["feature"])
    assert vm.feature_id == "tiny-llama/hook_embed/detector/2"
    assert "Top activating contexts" in vm.card_html and "wbf-peak" in vm.card_html
    assert "?page=steering&amp;feature=tiny-llama/hook_embed/detector/2" in vm.card_html
    vm.try_text = "The history of the world, and the rest of it."
    assert vm.run_try_text()
    assert vm.try_html.count('class="wbf-tok wbf-peak"') == 1 and "active on 2 of" in vm.try_html
    assert "<!DOCTYPE html>" in vm.card_document()


def test_text_and_word_searches(vm):
    vm.search_mode, vm.query = "text", "the cat and the dog"
    assert vm.search(), vm.error
    assert {r["feature"] for r in vm.results} == {0, 3, 4}  # " the" (and its duplicate), " and"
    assert all(r["score"] == pytest.approx(1.0) for r in vm.results)
    vm.search_mode, vm.query = "contexts", "the"
    assert vm.search(), vm.error
    assert vm.results and vm.result_kind == "contexts" and "snippet" in vm.columns()


def test_bad_input_becomes_a_message(vm):
    vm.open(1)
    before = vm.feature_id
    vm.search_mode, vm.query = "token", "   "
    assert not vm.search() and "the search is empty" in vm.error
    assert not vm.open(99) and "out of range" in vm.error and vm.feature_id == before
    assert not vm.open_feature_id("tiny-llama/blocks.0.hook_resid_post/detector/1")
    assert "site of SAE detector" in vm.error
    assert not vm.open_feature_id("tiny-llama/hook_embed/nope/1") and "unknown SAE" in vm.error
    assert not vm.open_feature_id("smollm2-135m/hook_embed/detector/1") and "belongs to model" in vm.error
    assert not vm.select_sae("nope") and "unknown SAE" in vm.error and vm.sae_name == "detector"
    vm.try_text = ""
    assert not vm.run_try_text() and "type a text" in vm.error
    assert vm.open_feature_id("tiny-llama/hook_embed/detector/3") and vm.feature_index == 3 and vm.error == ""
    assert vm.card.top_token == vm.model.tokenizer.decode([DETECTED[3]])


def test_no_model_registered_is_a_message():
    from workbench.viewmodels.features import FeaturesViewModel

    lonely = FeaturesViewModel(cached_model("tiny-gpt2"))
    assert lonely.sae_name is None and "no SAE is registered for tiny-gpt2" in lonely.error


def test_viewmodel_imports_no_gui():
    code = ("import sys, workbench.viewmodels.features; "
            "bad = [m for m in ('panel', 'ipywidgets', 'bokeh') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_steering_scores_become_sortable_columns(vm):
    import numpy as np

    assert "output_score" not in vm.columns()
    vm.store.set_scores("output_score", np.arange(6) / 10)
    assert vm.columns()[-1] == "output_score"
    assert vm.browse() and {r["feature"]: r["output_score"] for r in vm.results}[3] == pytest.approx(0.3)
