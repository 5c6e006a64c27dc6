"""Data-parallel training: `workbench train` under torchrun with two CPU processes (gloo)
ends with the same weights as one process on the same global batches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.cli.main import main
from workbench.sae.loading import load_sae

SITE = "blocks.1.hook_resid_post"


@pytest.mark.distributed
def test_two_gloo_processes_match_one(tmp_path, capsys):
    import workbench as wb
    from workbench.engine.store import capture_to_store

    capture_to_store(wb.load_model("tiny-llama"), "default", [SITE], tmp_path / "store", max_tokens=3000,
                     context_size=32, progress=False)
    common = ["train", "--store", str(tmp_path / "store"), "--arch", "topk", "batchtopk", "--d-sae", "64", "--k", "4",
              "--tokens", "5120", "--batch-size", "256", "--checkpoint-every", "10", "--device", "cpu", "--json"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun ships with torch"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "workbench.cli.main", *common,
                           "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 20

    for name in ("00_topk_L1_resid_post_64_k4", "01_batchtopk_L1_resid_post_64_k4"):
        one, two = load_sae(tmp_path / "one" / name), load_sae(tmp_path / "two" / name)
        assert two.metadata["training"]["world_size"] == 2
        for param in ("W_enc", "W_dec", "b_enc", "b_dec"):
            a, b = getattr(one, param), getattr(two, param)
            if name.startswith("00"):  # TopK: the averaged gradient is the single-process gradient
                assert torch.allclose(a, b, atol=1e-5), (name, param, float((a - b).abs().max()))
            else:  # BatchTopK selects k*B/2 per rank: close, not equal
                assert torch.isfinite(b).all()
        assert (tmp_path / "two" / "checkpoints" / "latest.json").exists()
