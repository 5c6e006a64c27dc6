"""CLI: models, sites, capture; --help everywhere; --json last line; clear errors."""

import json

import pytest

from tests.conftest import run_cli
from workbench.cli.main import VERB_MODULES, build_parser


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_every_verb_has_help():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"models", "sites", "capture", "app"} <= set(verbs)
    for name, sub in verbs.items():
        assert sub.format_help().strip(), name
    assert len(VERB_MODULES) >= 3


def test_models_json_lists_embedded_models():
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    names = {m["name"]: m for m in last_json(result.stdout)["models"]}
    assert {"smollm2-135m", "minilm-l6", "splade-tiny", "tiny-llama", "tiny-gpt2", "tiny-bert"} <= set(names)
    assert names["tiny-llama"]["available_offline"]


def test_sites_json(tmp_path):
    result = run_cli("sites", "tiny-gpt2", "--json")
    assert result.returncode == 0, result.stderr
    data = last_json(result.stdout)
    sites = {row["site"]: row["width"] for row in data["sites"]}
    assert sites["blocks.1.mlp.hook_post"] == 128 and sites["hook_embed"] == 64


def test_capture_cli_builds_a_store_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "store"
    args = ["capture", "--model", "tiny-llama", "--sites", "blocks.0.hook_resid_post", "blocks.1.hook_mlp_out",
            "--corpus", "jargon", "--max-tokens", "300", "--context-size", "32", "--out", str(out), "--json"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    data = last_json(result.stdout)
    assert data["n_tokens"] == 300 and data["sites"] == ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    again = run_cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("args, expected", [
    (["sites", "nope-model"], "unknown model 'nope-model'"),
    (["capture", "--model", "tiny-llama", "--sites", "blocks.9.hook_resid_post", "--corpus", "jargon",
      "--max-tokens", "10", "--out", "/tmp/never"], "unknown site"),
    (["capture", "--model", "tiny-llama", "--sites", "blocks.0.hook_resid_post", "--corpus", "no-corpus",
      "--max-tokens", "10", "--out", "/tmp/never"], "unknown corpus"),
])
def test_bad_input_gives_one_clear_line(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
