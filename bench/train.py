"""Training throughput of every SAE architecture: tokens per second of one full training step.

    python bench/train.py              # CPU, the shapes below; table + bench/results/train-<machine>.json
    python bench/train.py --gpu        # also on CUDA, then bench/train_step_gpu.py (TopK at d_in 2304,
                                       # d_sae 65536, k 64 against EleutherAI sparsify)
    python bench/train.py --gpu --gpu-only --gpu-shape wide --no-sparsify   # CUDA alone, d_in 2304, d_sae 65536

On CUDA the ragged architectures (BatchTopK, JumpReLU, Matryoshka) also run as
`<arch>/dense-ragged`: the same step with their decode (and BatchTopK's selection) through
dense tensors instead of the sparse kernels (`workbench.sae.sparse_ops.ragged_decode`).
`--archs jumprelu@k` is a JumpReLU with thresholds giving about k active latents per token.

One step = `training_step` (forward and loss, AuxK on with 10% of the latents dead) +
backward + removal of the decoder gradient's parallel part + Adam + decoder renormalisation:
exactly what the trainer does per dictionary, without the data loading. Shapes (CPU):
d_in 576 (SmolLM2's residual stream), d_sae 4096, k 32, batch 2048 tokens, fp32; on CUDA
d_sae 16384, batch 4096, fp32 parameters with bf16 autocast. The architectures take turns
(round-robin, so load on a shared machine hits all alike); the table shows the fastest of
`--steps` steps (the least disturbed) and the median, after `--warmup` rounds. `mp` runs k greedy steps with a full encoder product each, so it is
expected to be about k times slower than TopK.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.sae import ARCHITECTURE_NAMES, SaeConfig, create_sae  # noqa: E402
from workbench.sae.sparse_ops import dense_ragged  # noqa: E402

CPU_SHAPE = {"d_in": 576, "d_sae": 4096, "k": 32, "batch": 2048}
GPU_SHAPE = {"d_in": 576, "d_sae": 16384, "k": 32, "batch": 4096}
WIDE_GPU_SHAPE = {"d_in": 2304, "d_sae": 65536, "k": 64, "batch": 4096}
"""--gpu-shape wide: the kernels benchmark's training shape."""
RAGGED = ("batchtopk", "jumprelu", "matryoshka")
"""Architectures whose codes have no fixed k (ragged_decode); on GPU each also runs as
`<arch>/dense-ragged`, its decode through a dense code and a matmul instead of the kernels."""


def make_step(name: str, shape: dict, device: torch.device):
    """A closure running one full training step of a fresh SAE on a fixed batch; `name` is an
    architecture, or `<arch>/dense-ragged` for its ragged decode through the dense route, and
    `jumprelu@k` is a JumpReLU whose thresholds are set so that about k latents fire per token
    (each latent on k / d_sae of the batch), the sparsity of a trained one: at its initial
    thresholds half of the codes are active."""
    arch, _, variant = name.partition("/")
    arch, _, sparsity = arch.partition("@")
    decode_route = dense_ragged if variant == "dense-ragged" else contextlib.nullcontext
    k = None if arch in ("relu", "jumprelu") else shape["k"]
    cfg = SaeConfig(arch, shape["d_in"], shape["d_sae"], k=k, l1_coefficient=1.0)
    sae = create_sae(cfg, device=device).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape["batch"], shape["d_in"], generator=gen).to(device)
    sae.initialize_from_data(x)
    if sparsity == "k":
        with torch.no_grad():
            pre = sae.center(x) @ sae.W_enc + sae.b_enc
            fires = max(1, round(shape["batch"] * shape["k"] / shape["d_sae"]))
            sae.threshold.copy_(pre.kthvalue(shape["batch"] - fires, dim=0).values)
            del pre
    dead = (torch.arange(shape["d_sae"]) % 10 == 0).to(device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"), decode_route():
            out = sae.training_step(x, dead_mask=dead)
        out.loss.backward()
        sae.remove_parallel_grad()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()
        sae.observe(out.stats)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def measure(device: torch.device, shape: dict, steps: int, warmup: int, archs) -> dict:
    """Round-robin over the architectures (so load on a shared machine hits all alike);
    report the fastest step (the least disturbed) and the median."""
    stepper = {arch: make_step(arch, shape, device) for arch in archs}
    for _ in range(warmup):
        for arch in archs:
            stepper[arch]()
    times = {arch: [] for arch in archs}
    for i in range(steps):
        for arch in archs:
            if arch == "mp" and i >= max(2, steps // 4):
                continue  # k encoder products per step: a few samples suffice
            times[arch].append(stepper[arch]())
    rows = {}
    for arch in archs:
        best, median = min(times[arch]), statistics.median(times[arch])
        rows[arch] = {"best_step_s": best, "median_step_s": median, "tokens_per_s": shape["batch"] / best,
                      "steps_timed": len(times[arch])}
        print(f"  {device.type:<5}{arch:<25}{best * 1e3:10.1f} ms (median {median * 1e3:.1f}){shape['batch'] / best:14,.0f} tok/s",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="also measure on CUDA and run bench/train_step_gpu.py")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--archs", nargs="*", default=list(ARCHITECTURE_NAMES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--gpu-only", action="store_true", help="with --gpu: skip the CPU measurement")
    parser.add_argument("--gpu-shape", choices=["default", "wide"], default="default",
                        help="wide: d_in 2304, d_sae 65536, k 64 (the kernels benchmark's training shape)")
    parser.add_argument("--no-sparsify", action="store_true", help="with --gpu: skip bench/train_step_gpu.py")
    parser.add_argument("--out", default=None, help="results folder (default $OUT or bench/results)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = platform.processor() or platform.machine() or "cpu"
    record = {"machine": {"cpu": machine, "threads": torch.get_num_threads(), "torch": torch.__version__},
              "step": "training_step + backward + parallel-grad removal + Adam + decoder renorm, AuxK on",
              "cpu": {"shape": CPU_SHAPE, "dtype": "float32", "results": {}}}
    name = "train-cpu.json"
    if not (args.gpu and args.gpu_only):
        print(f"SAE training step, CPU ({torch.get_num_threads()} threads), shape {CPU_SHAPE}")
        record["cpu"]["results"] = measure(torch.device("cpu"), CPU_SHAPE, args.steps, args.warmup, args.archs)
    else:
        del record["cpu"]
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA")
        gpu = torch.cuda.get_device_name(0)
        shape = WIDE_GPU_SHAPE if args.gpu_shape == "wide" else GPU_SHAPE
        archs = list(args.archs) + [f"{arch}/dense-ragged" for arch in args.archs if arch.partition("@")[0] in RAGGED]
        print(f"SAE training step, {gpu}, shape {shape}, fp32 parameters + bf16 autocast")
        record["gpu"] = {"device": gpu, "shape": shape, "dtype": "fp32 + bf16 autocast",
                         "results": measure(torch.device("cuda"), shape, args.steps * 3, args.warmup * 2, archs)}
        name = "train-" + ("h200" if "H200" in gpu else "gpu") + ("-wide" if args.gpu_shape == "wide" else "") + ".json"
        if not args.no_sparsify:
            import train_step_gpu  # bench/train_step_gpu.py (the kernels engineer's), beside this file

            record["topk_vs_sparsify"] = train_step_gpu.run(out_dir)
    path = out_dir / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{'device':<7}{'architecture':<25}{'best step':>13}{'median':>12}{'tokens/s':>14}")
    for section in ("cpu", "gpu"):
        for arch, row in record.get(section, {}).get("results", {}).items():
            print(f"{section:<7}{arch:<25}{row['best_step_s'] * 1e3:10.1f} ms{row['median_step_s'] * 1e3:9.1f} ms"
                  f"{row['tokens_per_s']:14,.0f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # so --gpu can import train_step_gpu
    main()
