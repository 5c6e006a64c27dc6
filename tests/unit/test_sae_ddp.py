"""Data-parallel training: `workbench train` under torchrun with two CPU processes (gloo),
or two GPUs (NCCL), ends with the same weights as one process on the same global batches."""

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


def _train_one_and_two(tmp_path, capsys, device: str, backend: str) -> dict:
    """Train a TopK and a BatchTopK dictionary twice on the same store: one process, then
    two under torchrun (gloo on CPU, NCCL on two GPUs); check both runs' files and return
    the largest weight differences per dictionary."""
    import workbench as wb
    from workbench.engine.store import capture_to_store

    capture_to_store(wb.load_model("tiny-llama"), "default", [SITE], tmp_path / "store", max_tokens=3000,
                     context_size=32, progress=False)
    common = ["train", "--store", str(tmp_path / "store"), "--arch", "topk", "batchtopk", "--d-sae", "64", "--k", "4",
              "--tokens", "5120", "--batch-size", "256", "--checkpoint-every", "10", "--device", device, "--json"]
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

    differences = {}
    for name in ("00_topk_L1_resid_post_64_k4", "01_batchtopk_L1_resid_post_64_k4"):
        one, two = load_sae(tmp_path / "one" / name), load_sae(tmp_path / "two" / name)
        assert two.metadata["training"]["world_size"] == 2
        assert two.metadata["training"]["backend"] == backend
        assert one.metadata["training"]["backend"] is None
        differences[name] = {}
        for param in ("W_enc", "W_dec", "b_enc", "b_dec"):
            a, b = getattr(one, param), getattr(two, param)
            assert torch.isfinite(b).all(), (name, param)
            differences[name][param] = float((a - b).detach().abs().max())
        assert (tmp_path / "two" / "checkpoints" / "latest.json").exists()
    return differences


@pytest.mark.distributed
def test_two_gloo_processes_match_one(tmp_path, capsys):
    differences = _train_one_and_two(tmp_path, capsys, "cpu", "gloo")
    # TopK: the averaged gradient is the single-process gradient. (BatchTopK selects k*B/2 per
    # rank: close, not equal; checked finite above.)
    for param, largest in differences["00_topk_L1_resid_post_64_k4"].items():
        assert largest <= 1e-5, (param, largest)


@pytest.mark.gpu
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs: NCCL will not run two ranks on one")
def test_two_nccl_gpus_match_one_gpu(tmp_path, capsys):
    differences = _train_one_and_two(tmp_path, capsys, "cuda", "nccl")
    print("largest |one GPU - two GPUs| per parameter:", json.dumps(differences))
    # The same rule as on CPU, with room for GPU summation order (the all-reduce adds two
    # half-batch gradients; one GPU sums the whole batch in another order).
    for param, largest in differences["00_topk_L1_resid_post_64_k4"].items():
        assert largest <= 1e-4, (param, largest)
