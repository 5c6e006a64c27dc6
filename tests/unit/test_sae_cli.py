"""`workbench train` and `workbench eval` end to end on tiny-llama (a store, a grid, --json, --resume)."""

from __future__ import annotations

import json

import pytest

from workbench.cli.main import main

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import workbench as wb
    from workbench.engine.store import capture_to_store

    folder = tmp_path_factory.mktemp("cli") / "store"
    capture_to_store(wb.load_model("tiny-llama"), "default", [SITE], folder, max_tokens=4000, context_size=32,
                     progress=False)
    return folder


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.filterwarnings("ignore:the SAE explains little")  # 50 steps: an under-trained SAE
def test_train_grid_then_eval_json(store, tmp_path, capsys):
    out = tmp_path / "grid"
    status = main(["train", "--store", str(store), "--arch", "topk", "relu", "--d-sae", "64", "--k", "4",
                   "--tokens", "6400", "--batch-size", "128", "--out", str(out), "--json"])
    assert status == 0
    summary = last_json(capsys)
    assert [row["architecture"] for row in summary["saes"]] == ["topk", "relu"]
    assert summary["steps"] == 50 and summary["saes"][0]["l0"] == 4
    topk_dir = summary["saes"][0]["path"]

    assert main(["eval", topk_dir, "--tokens", "300", "--context-size", "32", "--json"]) == 0
    result = last_json(capsys)
    for key in ("l0", "mse", "fvu", "fvu_typical", "nmse", "cos", "dead_frac", "dense_frac", "ce_clean",
                "ce_spliced", "delta_ce", "ce_loss_recovered", "kl"):
        assert key in result, key
    assert result["model"] == "tiny-llama" and result["n_tokens"] == 300
    assert result["l0"] == pytest.approx(4.0)


def test_train_resume_flag_and_bad_input(store, tmp_path, capsys):
    out = tmp_path / "one"
    args = ["train", "--store", str(store), "--arch", "topk", "--d-sae", "64", "--k", "4", "--tokens", "2560",
            "--batch-size", "128", "--checkpoint-every", "5", "--out", str(out), "--json"]
    assert main(args) == 0
    first = last_json(capsys)
    assert main(args) == 2  # the folder holds a run: refuse without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # already complete: nothing more to do, same result
    assert last_json(capsys)["steps"] == first["steps"] == 20

    assert main(["train", "--store", str(store), "--arch", "gated", "--d-sae", "64", "--tokens", "256",
                 "--batch-size", "128", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "unknown SAE architecture 'gated'" in err and "hierarchical_topk" in err
    assert main(["train", "--store", str(store), "--arch", "topk", "--d-sae", "64", "--k", "65", "--tokens", "256",
                 "--batch-size", "128", "--out", str(tmp_path / "bad")]) == 2
    assert "1 <= k <= d_sae=64" in capsys.readouterr().err
