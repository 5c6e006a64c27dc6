"""The faces of steering on tiny-llama with a registered constructed SAE: the view-model
(what the Panel page binds to), the ipywidgets shell, and the `workbench steer` CLI."""

import json
import subprocess
import sys

import pytest

from tests.conftest import cached_model, run_cli
from tests.unit.steering_fixtures import SITE, TOKENS, token_sae

SAE_NAME = "steer-test"


@pytest.fixture(scope="module")
def model():
    return cached_model("tiny-llama")


@pytest.fixture(scope="module")
def sae_root(tmp_path_factory, model):
    from workbench.sae import save_sae

    root = tmp_path_factory.mktemp("saes")
    save_sae(token_sae(model), root / "tiny-llama" / SAE_NAME)
    return root


@pytest.fixture
def vm(model, sae_root, monkeypatch):
    from workbench.viewmodels.steering import SteeringViewModel

    monkeypatch.setenv("WORKBENCH_SAE_DIRS", str(sae_root))
    return SteeringViewModel(model, prompt="the cat sat on the mat", max_new_tokens=6)


def test_view_model_generates_both_continuations_with_marks(vm):
    assert vm.sae_name == SAE_NAME
    assert vm.add_feature(1) and vm.features[0]["coef"] == 1.0
    assert vm.set_coef(1, 3.0)
    assert vm.generate(), vm.error
    result = vm.last_result
    assert vm.baseline_text == result.baseline[0] and vm.steered_text == result.steered[0]
    assert vm.baseline_text != vm.steered_text
    assert "Baseline" in vm.compare_html and "wb-changed" in vm.compare_html
    assert f"{sum(result.steered_changed[0])} changed by steering" in vm.summary
    assert vm.progress == 100 and not vm.busy
    vm.positions_mode, vm.from_position = "from", -1
    assert vm.generate() and vm.last_result.positions == "from:-1"
    assert vm.last_result.applied[SITE] == [1] * 6


def test_view_model_turns_bad_input_into_messages(vm):
    assert not vm.add_feature(99) and "feature 99 does not exist" in vm.error
    assert not vm.generate() and "choose at least one feature" in vm.error
    vm.add_feature(0)
    assert not vm.set_coef(0, 50.0) and "outside the range" in vm.error
    vm.prompt = "   "
    assert not vm.generate() and "type a prompt" in vm.error
    vm.prompt = "word " * 300
    assert not vm.generate() and "the cap is 256" in vm.error
    assert not vm.open_feature_id(f"other-model/{SITE}/{SAE_NAME}/1") and "belongs to other-model" in vm.error
    assert not vm.open_feature_id("not-a-feature-id") and "not a feature id" in vm.error
    assert not vm.open_feature_id(f"tiny-llama/{SITE}/no-such-sae/1") and "unknown SAE" in vm.error
    vm.sweep_coefs = "1, two"
    vm.prompt = "the cat"
    assert not vm.sweep() and "cannot read the coefficients" in vm.error
    assert not vm.busy


def test_view_model_search_open_by_id_and_sweep(vm, model):
    vm.query = "7"
    assert vm.search() and vm.search_results[0][0] == 7
    word = model.tokenizer.decode([TOKENS[2]]).strip()
    vm.query = word
    assert vm.search(), vm.error
    assert 2 in [index for index, _ in vm.search_results]  # the feature that writes that token
    assert vm.open_feature_id(f"tiny-llama/{SITE}/{SAE_NAME}/3")
    assert [f["index"] for f in vm.features] == [3] and vm.feature_id.endswith("/3")
    # with a harvested feature store, a word also finds the features that fire on it
    from workbench.catalog import get_sae
    from workbench.features.harvest import HarvestConfig, harvest
    from workbench.sae import load_sae

    entry = get_sae("tiny-llama", SAE_NAME)
    harvest(model, load_sae(entry.folder), entry.feature_store, HarvestConfig(
        corpus="jargon", split="all", n_tokens=1024, context_size=32, batch_size=8, umap=False), sae_name=SAE_NAME)
    vm.query = "the"
    assert vm.search(), vm.error
    assert any("fires on 'the'" in label for _, label in vm.search_results)
    vm.sweep_coefs = "0, 2"
    assert vm.sweep(), vm.error
    kinds = [row["kind"] for row in vm.sweep_rows]
    assert kinds == ["baseline", "target", "target", "control", "control"]
    assert "highest concept score" in vm.sweep_summary


def test_view_model_imports_no_gui_toolkit():
    code = ("import sys, workbench.viewmodels.steering, workbench.steering.continuations; "
            "bad = [m for m in ('panel', 'ipywidgets', 'bokeh') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_widget_slider_and_generate_headless(vm):
    from workbench.widgets.steering import SteeringWidget

    widget = SteeringWidget(vm, features=[2])
    assert list(widget.sliders) == [2]
    widget.sliders[2].value = 4.0  # moving the slider updates the view-model
    assert vm.features[0]["coef"] == 4.0
    widget.max_new_tokens.value = 4
    assert widget.on_generate()
    assert "tokens changed" in widget.output.value and vm.last_result.interventions == ["feature 2 x 4 (norm)"]
    widget.feature_index.value = 999
    assert not widget.on_add() and "does not exist" in widget.message.value
    widget.on_remove(2)
    assert widget.sliders == {} and vm.features == []


def test_cli_steer_json_and_errors(sae_root, capsys):
    from workbench.cli.main import main

    folder = str(sae_root / "tiny-llama" / SAE_NAME)
    # one real subprocess, as a user runs it
    done = run_cli("steer", "--model", "tiny-llama", "--sae", folder, "--feature", "1", "--coef", "3",
                   "--prompt", "the cat sat", "--max-new-tokens", "5", "--positions", "from:-1", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"baseline", "steered", "interventions", "positions"} <= set(payload)
    assert payload["baseline"] != payload["steered"] and payload["positions"] == "from:-1"
    assert payload["edits_per_step"][SITE] == [1] * 5
    # bad input, in-process (same entry point, no interpreter start-up per case)
    for args, message in [
        (["--sae", folder, "--feature", "77"], "feature 77 does not exist"),
        (["--sae", folder, "--feature", "1", "--coef", "99"], "outside the range"),
        (["--sae", folder, "--feature", "1", "--positions", "sometimes"], "cannot read positions"),
        (["--sae", folder, "--feature", "1", "--max-new-tokens", "5000"], "max_new_tokens"),
        (["--sae", folder, "--feature", "1", "2", "--coef", "1", "2", "3"], "2 features but 3 coefficients"),
        (["--sae", folder, "--clamp", "3:1"], "cannot read --clamp"),
        (["--sae", "no-such-sae", "--feature", "1"], "unknown SAE"),
        (["--feature", "1"], "need --sae"),
        ([], "nothing to steer with"),
        (["--vector", str(sae_root / "missing.npy"), "--site", SITE], "not a file"),
    ]:
        status = main(["steer", "--model", "tiny-llama", "--prompt", "the cat", *args])
        err = capsys.readouterr().err
        assert status == 2 and message in err, (args, err)
