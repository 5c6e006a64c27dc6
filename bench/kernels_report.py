"""Markdown tables from the kernel and training-step benchmark JSON (for README / bench/README.md).

    python bench/kernels_report.py [bench/results/kernels-h200.json] [bench/results/train-step-h200.json]

Prints the goal-shape table (ours against dense, embedding_bag, the naive gather; speed-up
over dense and the fraction of the memory-traffic floor reached), the goals verdicts, the
top-k/encoder rows, the one-token latency and the training-step table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _ms(row: dict, method: str) -> str:
    value = row["ms"].get(method, {}).get("ms")
    return f"{value:.3f}" if value is not None else "–"


def kernels_tables(record: dict) -> list[str]:
    machine, ceilings = record["machine"], record["ceilings"]
    lines = [
        f"Measured on {machine['device']} (torch {machine['torch']}, triton {machine['triton']}); "
        f"copy {ceilings.get('copy_GBps', 0) / 1e3:.2f} TB/s, bf16 matmul {ceilings.get('bf16_matmul_TFLOPs', 0):.0f} TFLOP/s, "
        "medians of `triton.testing.do_bench` in ms.",
        "",
        "| op | N | k | d_sae | d_in | ours | dense | embedding_bag | naive gather | ours, unsorted slots | x dense | floor fraction "
        "| ours, packed W (inference) | x dense, packed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, label in (("decode_forward", "decode fwd"), ("decode_backward", "decode bwd")):
        for row in record[kind]:
            if row.get("tag") not in ("goal", "train"):
                continue
            shown = label + (" (fp32 W, training layout)" if row.get("tag") == "train" else "")
            naive = _ms(row, "naive_triton") if kind == "decode_forward" else _ms(row, "torch_gather")
            packed = f"{_ms(row, 'ours_packed')} | {row['x_dense_packed']:.1f}" if "x_dense_packed" in row else "– | –"
            lines.append(
                f"| {shown} | {row['N']} | {row['k']} | {row['d_sae']} | {row['d_in']} | {_ms(row, 'ours')} | {_ms(row, 'dense')} | "
                f"{_ms(row, 'embedding_bag') if 'embedding_bag' in row['ms'] else row.get('errors', {}).get('embedding_bag', '–')[:40]} | "
                f"{naive} | {_ms(row, 'ours_unsorted')} | {row['x_dense']:.1f} | {row['floor_fraction']:.2f} | {packed} |"
            )
    lines += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
    for name, goal in record.get("goals", {}).items():
        packed = f" (packed W: {goal['packed_value']:.2f})" if goal.get("packed_value") else ""
        lines.append(f"| {name} | {goal['value']:.2f}{packed} | {goal['target']} | {'yes' if goal['met'] else 'no'} |")
    if record.get("latency_n1"):
        lines += ["", "| one token (d_sae 131072, d_in 4096, k 64) | event median (us) | host loop, incl. dispatch (us/call) |", "|---|---|---|"]
        for row in record["latency_n1"]:
            lines.append(f"| {row['method']} | {row['event_ms']['ms'] * 1e3:.1f} | {row['host_loop_us_per_call']:.1f} |")
    if record.get("topk_select"):
        lines += ["", "| top-k select | ours | torch.topk | x | AuxK k_aux among 20% dead: ours / masked torch.topk | floor fraction |",
                  "|---|---|---|---|---|---|"]
        for row in record["topk_select"]:
            aux_ours = _ms(row, "ours_aux") if "ours_aux" in row["ms"] else _ms(row, "ours_aux_1152_dead_20pct")
            aux_torch = _ms(row, "torch_masked_topk_aux") if "torch_masked_topk_aux" in row["ms"] else _ms(row, "torch_topk_aux")
            lines.append(f"| [{row['N']}, {row['d_sae']}] k={row['k']} | {_ms(row, 'ours')} | {_ms(row, 'torch_topk')} | "
                         f"{row['x_torch']:.2f} | {aux_ours} / {aux_torch} | {row['floor_fraction']:.2f} |")
    if record.get("aux_decode"):
        row = record["aux_decode"]
        lines += ["", f"AuxK decode N={row['N']}, k_aux={row['k']} over {row['dead']} dead of {row['d_sae']}, d_in={row['d_in']}, "
                  f"fp32 W (ms): forward ours {_ms(row, 'ours_forward')} vs Triton gather {_ms(row, 'gather_forward')}; "
                  f"backward ours {_ms(row, 'ours_backward')} vs Triton scatter {_ms(row, 'scatter_backward')}."]
    if record.get("l2_gather_ceiling"):
        row = record["l2_gather_ceiling"]
        lines += ["", f"Gathered rows from an L2-resident table ({row['table_MB']:.0f} MB): {row['gathered_TBps']:.2f} TB/s; "
                  f"the goal shape moved {row.get('goal_shape_gathered_TBps', float('nan')):.2f} TB/s of gathered rows."]
    for row in record.get("encode", []):
        lines += ["", f"Encoder N={row['N']}, {row['d_in']} -> {row['d_sae']}, k={row['k']} (ms): forward ours {_ms(row, 'ours_forward')} "
                  f"vs torch {_ms(row, 'torch_forward')} (GEMM alone {_ms(row, 'gemm_only')}); with AuxK {_ms(row, 'ours_forward_auxk')} vs "
                  f"{_ms(row, 'torch_forward_auxk')}; backward ours {_ms(row, 'ours_backward')} vs dense {_ms(row, 'dense_backward')}."]
    sweep = [row for row in record["decode_forward"] if row.get("tag") == "sweep"]
    if sweep:
        lines += ["", "| sweep (decode fwd) N | k | d_sae | d_in | ours | dense | x dense | floor fraction |", "|---|---|---|---|---|---|---|---|"]
        for row in sorted(sweep, key=lambda r: (r["d_sae"], r["d_in"], r["k"], r["N"])):
            lines.append(f"| {row['N']} | {row['k']} | {row['d_sae']} | {row['d_in']} | {_ms(row, 'ours')} | {_ms(row, 'dense')} | "
                         f"{row['x_dense']:.1f} | {row['floor_fraction']:.2f} |")
    return lines


def train_table(record: dict) -> list[str]:
    shape = record["shape"]
    lines = [
        f"TopK SAE training step on {record['machine']['device']}: d_in={shape['d_in']}, d_sae={shape['d_sae']}, k={shape['k']}, "
        f"{shape['tokens']} tokens, {record['dtype']}, {record['optimizer']}; floor {record['floor_ms']['total']:.2f} ms.",
        "",
        "| variant | ms / step | tokens / s | floor fraction | vs sparsify |",
        "|---|---|---|---|---|",
    ]
    for label, row in record["results"].items():
        ratio = row.get("x_sparsify", row.get("x_sparsify_auxk"))
        lines.append(f"| {label} | {row['ms_per_step']:.2f} | {row['tokens_per_s'] / 1e3:.0f}k | {row['floor_fraction']:.2f} | "
                     f"{f'{ratio:.2f}x' if ratio else ''} |")
    for label, error in record.get("errors", {}).items():
        lines.append(f"| {label} | error: {error.splitlines()[0][:80]} | | | |")
    return lines


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or [RESULTS / "kernels-h200.json", RESULTS / "train-step-h200.json"]
    for path in paths:
        if not path.exists():
            print(f"(no {path})")
            continue
        record = json.loads(path.read_text())
        print("\n".join(train_table(record) if "shape" in record else kernels_tables(record)))
        print()


if __name__ == "__main__":
    main()
