"""The GPU training script runs end to end on the CPU with its --tiny preset (so the one
H200 run starts from a script that works), and its output unpacks into loadable SAEs."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from workbench.sae.loading import load_sae

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "train_shipped_saes.py"


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--max-train-tokens", "20000",
                           "--budget-seconds", "45"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "main SAE topk-l1-256:" in done.stdout.splitlines()[-1]
    pieces = sorted(out.glob("shipped_saes.tar.part*"))
    assert pieces and all(p.stat().st_size <= 15 * 1024 * 1024 for p in pieces)
    tar_path = tmp_path / "s.tar"
    tar_path.write_bytes(b"".join(p.read_bytes() for p in pieces))
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "data", filter="data")
    for name in ("topk-l1-256", "topk-l0-128"):
        folder = tmp_path / "data" / "saes" / "tiny-llama" / name
        sae = load_sae(folder)
        assert sae.cfg.k == 8 and json.loads((folder / "cfg.json").read_text())["dtype"] == "float16"
        metrics = json.loads((folder / "eval.json").read_text())
        assert metrics["ce_with_error_term"] == pytest.approx(metrics["ce_clean"], abs=1e-5)
        assert 0 < metrics["fvu"] < 1 and "delta_ce_splicing_position0" in metrics
    summary = json.loads((out / "summary.json").read_text())
    assert summary["main_sae"] == "topk-l1-256" and set(summary["main_passes"]) == {"delta_ce", "fvu_typical", "dead_frac"}


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_shipped_saes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extra_training_text_never_brings_held_out_documents():
    from workbench.corpora.corpus import Corpus

    docs = tuple(f"document number {i} " * 5 for i in range(60))
    default = Corpus(name="d", docs=docs, source="test", license="test")
    held = [text for _, text in default.split("test")]
    assert held, "the split needs a held-out document for this test"
    extra = Corpus(name="e", docs=(held[0], docs[0], "a new document", "a new document", "another"),
                   source="test", license="test")
    train_docs, added = _script_module().combined_training_docs(default, extra)
    assert added == ["a new document", "another"]
    assert set(train_docs).isdisjoint(held) and len(train_docs) + len(held) == len(docs)
