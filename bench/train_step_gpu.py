"""TopK SAE training-step throughput on one GPU: ours with kernels, ours without, EleutherAI sparsify.

    python bench/train_step_gpu.py            # on the GPU: JSON to $OUT (or bench/results/), table last
    python bench/train_step_gpu.py --smoke    # CPU, tiny shapes, interpreter: checks the flow only

One step = forward + backward + Adam on 4096 tokens at d_in=2304, d_sae=65536, k=64, fp32
parameters under bf16 autocast, the decoder kept at unit-norm rows (parallel gradient
removed before the step, rows renormalised after), as both trainers do. All variants run
in one process on the same batches, each after a few warm-up steps (kernel tuning and
first-use checks happen there), timed with CUDA events over `--steps` steps:

- ours_kernels:      workbench.sae's TopKSAE, the trainer's step, workbench.kernels on Triton;
- ours_torch_path:   the same step with the kernels off (the SAE's own torch fallbacks);
- ours_reference_ops: the same step through workbench.kernels' plain-torch reference ops;
- sparsify:          EleutherAI sparsify's SparseCoder (eai-sparsify, Triton decoder), with
                     torch.optim.Adam's default (foreach) implementation;
- sparsify_fused_adam: the same with Adam(fused=True), the optimizer ours uses (so the
                     ratio of the two shows what comes from the optimizer alone);
- sparsify_eager:    the same with its embedding_bag decoder;
plus `*_auxk` rows with 20% of the latents dead (AuxK on) for ours and sparsify. Ours uses
Adam(fused=True), as workbench.sae's Trainer does. For ours_kernels (with and without
AuxK) the run also times the forward and forward + backward alone, and records a
torch.profiler table of the CUDA kernels of a few steps (train-step-profile.txt).
`bench/train.py --gpu` (the SAE engineer's entry point) calls `run()` here.

The floor is what one step must at least do: the encoder GEMM at the measured bf16 rate,
and at the measured copy bandwidth the pre-activations written and read once, the fp32
gradients written once and Adam's traffic (read p, g, m, v; write p, m, v).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import types
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.atomic import write_json  # noqa: E402

SHAPE = dict(d_in=2304, d_sae=65536, k=64, tokens=4096)
SMOKE_SHAPE = dict(d_in=32, d_sae=256, k=8, tokens=64)


def _stub_sparsify_imports() -> None:
    """sparsify/__init__ imports its trainer, which imports `datasets` and `schedulefree` by
    name only; SparseCoder needs neither. Stand-ins carrying the imported names suffice."""
    for name, attrs in (("datasets", ("Dataset", "DatasetDict")), ("schedulefree", ("ScheduleFreeWrapper",))):
        if name in sys.modules:
            continue
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            for attr in attrs:
                setattr(module, attr, type(attr, (), {"__doc__": f"stand-in: {name} is not installed here"}))
            sys.modules[name] = module


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def ms_per_step(self, step, steps: int) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(steps):
                step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / steps
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) * 1e3 / steps


def ours_step_factory(shape, device, mode: str, dead_fraction: float):
    """A closure running one trainer step of workbench.sae's TopKSAE (see Trainer._train_step)."""
    from workbench.kernels import use
    from workbench.sae import SaeConfig, create_sae
    from workbench.sae import sparse_ops

    cfg = SaeConfig(architecture="topk", d_in=shape["d_in"], d_sae=shape["d_sae"], k=shape["k"])
    sae = create_sae(cfg, device=device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4, fused=True)  # as workbench.sae's Trainer
    dead = (torch.rand(shape["d_sae"], device=device) < dead_fraction) if dead_fraction else None
    autocast = device.type == "cuda"
    backend = {"kernels": "triton", "torch_path": "reference", "reference_ops": "reference"}[mode]
    sparse_ops._CHOICES.clear()  # the SAE caches its choice per (op, device, dtype)
    if mode == "reference_ops":  # send the SAE through workbench.kernels, whose reference then runs
        for op in ("sparse_decode", "topk_encode"):
            for dtype in (torch.float32, torch.bfloat16):
                sparse_ops._CHOICES[(op, device.type, dtype)] = "kernels"

    def step(x, phase: str = "step"):
        with use(backend):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                out = sae.training_step(x, dead_mask=dead)
            if phase == "forward":
                return out.loss
            out.loss.backward()
            if phase == "forward_backward":
                optimizer.zero_grad(set_to_none=True)
                return out.loss
            sae.remove_parallel_grad()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sae.normalize_decoder()
        return out.loss

    return step, {"class": "workbench.sae.TopKSAE", "aux_k": cfg.resolved_aux_k if dead_fraction else 0}


def sparsify_step_factory(shape, device, eager: bool, dead_fraction: float, fused_adam: bool = False):
    """A closure running sparsify's training step (as its Trainer does, Adam, fvu loss)."""
    _stub_sparsify_imports()
    from workbench.kernels import _interpreter

    _interpreter.install()  # smoke runs: sparsify's Triton decoder under the CPU interpreter
    import sparsify.sparse_coder as sc
    import sparsify.utils as su
    from sparsify.config import SparseCoderConfig

    sc.decoder_impl = su.eager_decode if eager else su.decoder_impl
    cfg = SparseCoderConfig(num_latents=shape["d_sae"], k=shape["k"])
    sae = sc.SparseCoder(shape["d_in"], cfg, device=device, dtype=torch.float32)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4, fused=fused_adam)
    dead = (torch.rand(shape["d_sae"], device=device) < dead_fraction) if dead_fraction else None

    def step(x, phase: str = "step"):
        out = sae(x, dead_mask=dead)
        loss = out.fvu + (out.auxk_loss if dead is not None else 0)
        if phase == "forward":
            return loss
        loss.backward()
        if phase == "forward_backward":
            optimizer.zero_grad(set_to_none=True)
            return loss
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
        return loss

    return step, {"decoder": "eager embedding_bag" if eager else su.decoder_impl.__name__,
                  "adam": "fused" if fused_adam else "default (foreach)"}


def profile_steps(step, label: str, path: Path, steps: int = 3) -> None:
    """Append the CUDA kernels of a few steps (torch.profiler, top 25 by their own GPU time) to `path`."""
    try:
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70)
        with open(path, "a") as handle:
            handle.write(f"== {label}: {steps} steps\n{table}\n")
    except Exception as error:  # noqa: BLE001 (the profile is a bonus: never fail the run for it)
        with open(path, "a") as handle:
            handle.write(f"== {label}: profiler failed: {type(error).__name__}: {error}\n")


def floor_ms(shape, copy_bw: float, mm_rate: float) -> dict:
    n, d_in, d_sae = shape["tokens"], shape["d_in"], shape["d_sae"]
    params = 2 * d_sae * d_in + d_sae + d_in
    gemm = 2.0 * n * d_in * d_sae / mm_rate
    pre = 2 * n * d_sae * 2 / copy_bw  # bf16 pre-activations written once, read once
    grads = params * 4 / copy_bw
    adam = params * 28 / copy_bw
    return {"total": (gemm + pre + grads + adam) * 1e3, "gemm": gemm * 1e3, "pre": pre * 1e3, "grads": grads * 1e3, "adam": adam * 1e3}


def ceilings(device) -> tuple[float, float]:
    """(copy bytes/s, bf16 matmul FLOP/s) measured here, or H200 figures off the GPU."""
    if device.type != "cuda":
        return 4.3e12, 790e12
    from triton.testing import do_bench

    x = torch.randn(1 << 30, device=device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_bw = 2 * x.numel() * 2 / (do_bench(lambda: y.copy_(x), return_mode="median") * 1e-3)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_rate = 2 * 8192**3 / (do_bench(lambda: a @ a, return_mode="median") * 1e-3)
    return copy_bw, mm_rate


def run(out_dir: str | Path | None = None, *, steps: int = 20, warmup: int = 4, smoke: bool = False,
        variants: tuple[str, ...] | None = None) -> dict:
    """Measure every variant; write train-step-<gpu>.json into out_dir; return the record."""
    device = torch.device("cpu" if smoke else "cuda")
    shape = SMOKE_SHAPE if smoke else SHAPE
    out_dir = Path(out_dir or os.environ.get("OUT") or Path(__file__).parent / "results")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu-smoke"
    path = out_dir / ("train-step-" + ("h200" if "H200" in gpu else "".join(c if c.isalnum() else "-" for c in gpu.lower())) + ".json")
    copy_bw, mm_rate = ceilings(device)
    record = {
        "machine": {"device": gpu, "torch": torch.__version__},
        "shape": shape, "dtype": "fp32 parameters, bf16 autocast",
        "optimizer": "torch.optim.Adam: fused=True for ours (as workbench.sae's Trainer); sparsify as it ships "
                     "(default, foreach) and, in sparsify_fused_adam, fused=True",
        "ceilings": {"copy_GBps": copy_bw / 1e9, "bf16_matmul_TFLOPs": mm_rate / 1e12},
        "floor_ms": floor_ms(shape, copy_bw, mm_rate), "results": {}, "errors": {},
    }
    factories = {
        "ours_kernels": lambda dead: ours_step_factory(shape, device, "kernels", dead),
        "ours_torch_path": lambda dead: ours_step_factory(shape, device, "torch_path", dead),
        "ours_reference_ops": lambda dead: ours_step_factory(shape, device, "reference_ops", dead),
        "sparsify": lambda dead: sparsify_step_factory(shape, device, False, dead),
        "sparsify_fused_adam": lambda dead: sparsify_step_factory(shape, device, False, dead, fused_adam=True),
        "sparsify_eager": lambda dead: sparsify_step_factory(shape, device, True, dead),
    }
    plan = [(name, 0.0) for name in factories] + [("ours_kernels", 0.2), ("sparsify", 0.2)]
    profile_path = out_dir / "train-step-profile.txt"
    if device.type == "cuda":
        out_dir.mkdir(parents=True, exist_ok=True)
        profile_path.unlink(missing_ok=True)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = [torch.randn(shape["tokens"], shape["d_in"], device=device, generator=generator) for _ in range(4)]
    timer = Timer(device)
    for name, dead in plan:
        label = name + ("_auxk" if dead else "")
        if variants and label not in variants:
            continue
        print(f"== {label}", flush=True)
        step_fn = None
        try:
            step_fn, info = factories[name](dead)
            counter = iter(range(10**9))
            step = lambda: step_fn(batches[next(counter) % len(batches)])  # noqa: E731
            for _ in range(warmup):
                loss = step()
            if not torch.isfinite(loss.detach()).all():
                raise FloatingPointError(f"{label}: loss {float(loss)} after warm-up")
            n_steps = steps if "reference" not in name else max(2, steps // 5)
            ms = timer.ms_per_step(step, n_steps)
            record["results"][label] = {"ms_per_step": ms, "tokens_per_s": shape["tokens"] / (ms * 1e-3),
                                        "floor_fraction": record["floor_ms"]["total"] / ms, "steps": n_steps, **info}
            if label in ("ours_kernels", "sparsify", "ours_kernels_auxk"):  # where the time goes
                for phase in ("forward", "forward_backward"):
                    phase_step = lambda: step_fn(batches[next(counter) % len(batches)], phase)  # noqa: E731
                    record["results"][label][f"{phase}_ms"] = timer.ms_per_step(phase_step, n_steps)
                result = record["results"][label]
                result["optimizer_and_upkeep_ms"] = ms - result["forward_backward_ms"]
            if label in ("ours_kernels", "ours_kernels_auxk", "sparsify") and device.type == "cuda":
                profile_steps(step, label, profile_path)
            print(f"   {ms:.3f} ms/step  {shape['tokens'] / (ms * 1e-3) / 1e3:.1f}k tokens/s", flush=True)
        except Exception as error:  # noqa: BLE001 (record, keep going)
            record["errors"][label] = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-2000:]}"
            print(f"   ERROR {type(error).__name__}: {str(error)[:300]}", flush=True)
        finally:
            del step_fn
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_json(path, record)
    results = record["results"]
    for base in ("sparsify", "sparsify_fused_adam", "sparsify_auxk"):
        mine = results.get("ours_kernels" + ("_auxk" if base.endswith("_auxk") else ""))
        if mine and base in results:
            mine["x_" + base] = results[base]["ms_per_step"] / mine["ms_per_step"]
    write_json(path, record)
    print_table(record, path)
    return record


def print_table(record: dict, path: Path) -> None:
    print("\n" + "=" * 90)
    print(f"TopK SAE step, {record['machine']['device']}: d_in={record['shape']['d_in']} d_sae={record['shape']['d_sae']} "
          f"k={record['shape']['k']} tokens={record['shape']['tokens']}, {record['dtype']}; floor {record['floor_ms']['total']:.2f} ms")
    for label, row in record["results"].items():
        extra = "  ".join(f"{k}={v:.2f}" for k, v in row.items() if k.startswith("x_") or k.endswith("_ms"))
        print(f"{label:<22} {row['ms_per_step']:9.3f} ms/step {row['tokens_per_s'] / 1e3:9.1f}k tok/s  floor {row['floor_fraction']:.2f}  {extra}")
    for label, error in record["errors"].items():
        print(f"{label:<22} ERROR {error.splitlines()[0][:150]}")
    print(f"-> {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--variants", nargs="*", default=None, help="labels to run (default: all)")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/train_step_gpu.py needs a CUDA GPU (or --smoke on CPU)")
    run(args.out, steps=args.steps, warmup=args.warmup, smoke=args.smoke, variants=tuple(args.variants) if args.variants else None)


if __name__ == "__main__":
    main()
