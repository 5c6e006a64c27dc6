"""`workbench harvest`: a full run with --json, an interrupted run resumed by the same command,
and bad input reported as one line with exit status 2."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cached_model
from tests.unit.features_fixtures import random_sae
from workbench.cli.main import main
from workbench.features import FeatureStore

pytestmark = pytest.mark.filterwarnings("ignore:the SAE explains little")  # a random SAE, on purpose


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    from workbench.sae.io import save_sae

    folder = tmp_path_factory.mktemp("cli") / "rnd-l1"
    save_sae(random_sae(cached_model("tiny-llama"), d_sae=24), folder)
    return folder


def _args(sae_dir, out, *extra):
    return ["harvest", str(sae_dir), "--model", "tiny-llama", "--tokens", "1024", "--context-size", "64",
            "--batch-size", "4", "--out", str(out), "--no-umap", "--json", *extra]


def test_harvest_json_and_resume(sae_dir, tmp_path, capsys):
    out = tmp_path / "rnd.sqlite"
    assert main(_args(sae_dir, out, "--stop-after", "1")) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["complete"] is False and first["batches_done"] == 1 and first["n_batches"] == 4
    assert main(_args(sae_dir, out)) == 0
    text = capsys.readouterr().out
    result = json.loads(text.strip().splitlines()[-1])
    assert result["complete"] is True and result["d_sae"] == 24 and result["n_tokens"] == 16 * 63
    assert result["size_bytes"] == out.stat().st_size and 0 <= result["dead_frac"] <= 1
    assert "24 latents of rnd-l1 at blocks.1.hook_resid_post of tiny-llama" in text
    store = FeatureStore(out, model="tiny-llama")
    assert store.sae_name == "rnd-l1" and store.meta["corpus"] == "default" and store.meta["split"] == "test"


def test_harvest_bad_input(sae_dir, tmp_path, capsys):
    out = tmp_path / "x.sqlite"
    out.write_text("")
    assert main(_args(sae_dir, out)) == 2
    assert "already exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert main(_args(sae_dir, tmp_path / "y.sqlite", "--site", "blocks.9.hook_resid_post")) == 2
    assert "unknown site" in capsys.readouterr().err
    assert main(_args(tmp_path / "missing", tmp_path / "z.sqlite")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["harvest", str(sae_dir), "--model", "tiny-llama", "--tokens", "0", "--out", str(tmp_path / "w")]) == 2
    assert "--tokens must be >= 1" in capsys.readouterr().err
