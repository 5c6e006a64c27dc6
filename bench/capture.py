"""Capture throughput against a plain Hugging Face forward with output_hidden_states=True.

Same model, same batch (default 8 x 128 tokens of the shipped corpus), same machine,
same process: the ratio is the overhead of capturing through nnsight. Goal: at most
1.15x on smollm2-135m (capturing every layer's residual stream, i.e. the same work as
output_hidden_states). Also reported: capturing one middle layer, where the engine
stops the forward early and beats the plain full forward.

    python bench/capture.py                      # CPU, fp32
    python bench/capture.py --device cuda        # GPU, bf16 (H200 run)

Prints a table and writes bench/results/capture-<machine>.json (or $OUT/ when set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--machine", default=None, help="label for the results file (default: cpu or gpu name)")
    args = parser.parse_args()

    import workbench as wb
    from workbench.corpora import load_corpus, pack_corpus

    model = wb.load_model(args.model, device=args.device, dtype=args.dtype)
    device = model.device
    packed = pack_corpus(load_corpus("default", max_docs=2000), model.tokenizer, args.context,
                         max_tokens=args.batch * args.context)
    ids = packed.tokens[: args.batch].to(device)
    mask = torch.ones_like(ids)
    all_layers = [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)]
    middle = [f"blocks.{model.n_layers // 2}.hook_resid_post"]

    def plain():
        with torch.no_grad():
            return model.hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states

    def capture_all():
        return model.read_sites(ids, mask, all_layers)

    def capture_middle():
        return model.read_sites(ids, mask, middle)

    # correctness first: the captured values are the hidden states
    hidden = plain()
    values = capture_all()
    worst = max((values[s] - hidden[l + 1]).abs().max().item() for l, s in enumerate(all_layers[:-1]))
    for fn in (plain, capture_all, capture_middle):  # warm-up
        fn()
    rows = []
    tokens = ids.numel()
    results = {}
    # interleave the three so drift on a shared machine hits all of them alike
    samples = {"plain": [], "all": [], "middle": []}
    for _ in range(args.repeats):
        samples["plain"] += timed(plain, 1, device)
        samples["all"] += timed(capture_all, 1, device)
        samples["middle"] += timed(capture_middle, 1, device)
    for key, label in [("plain", "HF forward, output_hidden_states=True"),
                       ("all", f"capture {len(all_layers)} resid_post sites"),
                       ("middle", f"capture {middle[0]} (stops early)")]:
        median = statistics.median(samples[key])
        results[key] = {"label": label, "median_s": median, "tokens_per_s": tokens / median,
                        "all_s": samples[key]}
    base = results["plain"]["median_s"]
    for key in ("all", "middle"):
        results[key]["ratio_to_plain"] = results[key]["median_s"] / base
    machine = args.machine or (torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu")
    report = {
        "benchmark": "capture", "model": args.model, "batch": args.batch, "context": args.context,
        "device": str(device), "dtype": str(model.dtype).replace("torch.", ""), "machine": machine,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "max_abs_diff_vs_hidden_states": worst,
        "goal": "capture of every layer <= 1.15x the plain forward", "results": results,
        "goal_met": results["all"]["ratio_to_plain"] <= 1.15,
    }
    out_dir = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "gpu" if device.type == "cuda" else "cpu"
    path = out_dir / f"capture-{slug}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.model} {args.batch}x{args.context} tokens, {report['dtype']} on {machine} "
          f"({report['threads']} threads); max |capture - hidden_states| = {worst:.2e}")
    print(f"{'what':<48} {'median ms':>10} {'tokens/s':>10} {'x plain':>8}")
    for key in ("plain", "all", "middle"):
        r = results[key]
        print(f"{r['label']:<48} {r['median_s'] * 1e3:>10.1f} {r['tokens_per_s']:>10.0f} "
              f"{r.get('ratio_to_plain', 1.0):>8.3f}")
    print(f"goal (<= 1.15x): {'met' if report['goal_met'] else 'NOT met'}; wrote {path}")


if __name__ == "__main__":
    main()
