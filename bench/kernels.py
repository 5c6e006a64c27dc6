"""Benchmark of the sparse SAE kernels on one GPU (made for the H200), against torch baselines.

    python bench/kernels.py                 # on the GPU: JSON to $OUT (or bench/results/), table last
    python bench/kernels.py --smoke         # on CPU under TRITON_INTERPRET=1: tiny shapes, checks the flow

What it measures, in one process, after checking each op's output before timing it:
- ceilings: device-to-device copy bandwidth (bytes read + written) and a bf16 matmul rate;
  the SMs' read rates from L2 and from HBM (bench/l2_probe.py), and from the L2 rate the
  bound it puts on the decode forward at the goal shape;
- decode forward, y = sum_j a[n,j] W[idx[n,j]]: ours (slots in ascending latent order, as
  topk_encode returns them, and in random order), the dense product z @ W with z [N, d_sae],
  F.embedding_bag, and a naive Triton gather (our kernel with one program per token x 512
  columns and no unrolling); goal shapes d_sae=131072, d_in=4096, k=64, N in {1, 4096,
  16384}, then a sweep of d_sae {16384, 131072} x d_in {576, 2304, 4096} x k {32, 64, 128}
  x N {1, 4096, 16384} (ours and dense) until the time budget runs out;
- decode backward (d acts + d W_dec): ours, the dense backward (two matmuls), a torch
  gather's autograd, and embedding_bag's (bf16 per-sample-weight backward is not
  implemented on CUDA: recorded as such);
- one-token decode latency including Python dispatch (a host-timed loop of back-to-back
  calls) besides the event-timed median;
- the TopK encoder: our selection (torch.topk + index sort; AuxK among gathered dead
  columns) against torch.topk and a masked torch.topk; the whole encode (GEMM + select,
  with and without AuxK) and its backward against dense torch;
- AuxK's decode (k_aux = 1152 slots over 20% dead latents, fp32 weights, bf16 codes):
  the dense route over the named latents against the Triton gather/scatter;
- the launch configs the tuner chose (and any it rejected for disagreeing outputs).

Every time is a median (p10 and p90 kept) of triton.testing.do_bench, which clears the L2
between repetitions. Every result carries the fraction of its memory-traffic floor
reached: floor time = the fewest bytes the op must move / the measured copy bandwidth
(gathered rows counted once per distinct latent). Each section runs in try/except (errors
are recorded and the run goes on), the JSON is rewritten after every section, and the
sweep stops at the time budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.atomic import write_json  # noqa: E402
from workbench.kernels import sparse_decode, topk_encode, use  # noqa: E402

GOAL = dict(n_latents=131072, width=4096, k=64)
ENCODER = dict(n_rows=4096, d_in=2304, n_latents=65536, k=64, k_aux=1152)
NAIVE_CONFIG = dict(BLOCK_N=1, BLOCK_D=512, UNROLL=1, num_warps=4)


class Bench:
    """Timing, byte-floor bookkeeping and the JSON record of one run."""

    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.device = torch.device("cpu" if self.smoke else "cuda")
        self.started = time.perf_counter()
        self.out_path = Path(args.out) / args.name
        props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
        import triton

        self.record = {
            "machine": {
                "device": props.name if props else "cpu (smoke run, timings meaningless)",
                "sm_count": props.multi_processor_count if props else None,
                "memory_gib": round(props.total_memory / 2**30, 1) if props else None,
                "l2_bytes": getattr(props, "L2_cache_size", None) if props else None,
                "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            },
            "notes": "times in ms (medians, p10/p90); floor_fraction = floor time / measured time",
            "ceilings": {}, "read_ceilings": {}, "checks": [], "decode_forward": [], "decode_backward": [], "latency_n1": [],
            "topk_select": [], "encode": [], "aux_decode": {}, "l2_gather_ceiling": {}, "tuning": {}, "goals": {},
            "errors": [], "skipped": [],
        }
        self.copy_bw = 4.3e12  # replaced by the measurement
        self.mm_rate = 790e12

    # ------------------------------------------------------------------ plumbing
    def left_s(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        self.record["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        write_json(self.out_path, self.record)

    def section(self, name: str, fn) -> None:
        print(f"== {name} ({self.left_s():.0f} s left)", flush=True)
        try:
            fn()
        except Exception as error:  # noqa: BLE001 (record, keep going)
            self.record["errors"].append({"section": name, "error": f"{type(error).__name__}: {error}",
                                          "trace": traceback.format_exc()[-3000:]})
            print(f"   ERROR in {name}: {type(error).__name__}: {str(error)[:300]}", flush=True)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.save()

    def time_ms(self, fn, rep_ms: int = 60) -> dict:
        """Median, p10, p90 in ms of fn() (do_bench on GPU; a few wall-clock runs in smoke mode)."""
        if self.smoke:
            fn()
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                runs.append((time.perf_counter() - t0) * 1e3)
            runs.sort()
            return {"ms": runs[1], "p10": runs[0], "p90": runs[2]}
        from triton.testing import do_bench

        median, p10, p90 = do_bench(fn, warmup=10, rep=rep_ms, quantiles=[0.5, 0.1, 0.9])
        return {"ms": median, "p10": p10, "p90": p90}

    def host_loop_us(self, fn, calls: int = 2000) -> float:
        """Microseconds per call of back-to-back calls timed on the host: includes dispatch."""
        calls = 20 if self.smoke else calls
        for _ in range(min(50, calls)):
            fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / calls * 1e6

    def sync(self) -> None:
        if torch.cuda.is_available() and not self.smoke:
            torch.cuda.synchronize()

    def floor_ms(self, n_bytes: float, flops: float = 0.0) -> float:
        return max(n_bytes / self.copy_bw, flops / self.mm_rate) * 1e3

    # ------------------------------------------------------------------ inputs
    def codes(self, n_rows: int, k: int, n_latents: int, generator, order: str = "sorted"):
        """acts [N, k] bf16 (positive, like ReLU'd top-k values), idx [N, k] unique per row."""
        chunks = []
        step = max(1, (1 << 27) // n_latents)  # rows per chunk of random keys (512 MB fp32)
        for start in range(0, n_rows, step):
            rows = min(step, n_rows - start)
            keys = torch.rand(rows, n_latents, device=self.device, generator=generator)
            chunks.append(keys.topk(k, dim=1).indices)
            del keys
        idx = torch.cat(chunks)
        idx = idx.sort(dim=1).values if order == "sorted" else idx[:, torch.randperm(k, device=self.device, generator=generator)]
        acts = (torch.rand(n_rows, k, device=self.device, generator=generator) + 0.1).to(torch.bfloat16)
        return acts, idx

    def generator(self, seed: int):
        return torch.Generator(device=self.device).manual_seed(seed)

    def shape(self, n_rows, k, n_latents, width):
        if not self.smoke:
            return n_rows, k, n_latents, width
        return max(1, min(n_rows, 24)), min(k, 8), min(n_latents, 256), min(width, 48)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


# ---------------------------------------------------------------------- sections
def ceilings(b: Bench) -> None:
    n = (1 << 16) if b.smoke else (1 << 30)  # 2 GiB of bf16
    x = torch.randn(n, device=b.device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    t = b.time_ms(lambda: y.copy_(x))
    b.copy_bw = 2 * x.numel() * 2 / (t["ms"] * 1e-3)
    size = 256 if b.smoke else 8192
    a = torch.randn(size, size, device=b.device, dtype=torch.bfloat16)
    c = torch.randn(size, size, device=b.device, dtype=torch.bfloat16)
    tm = b.time_ms(lambda: a @ c)
    b.mm_rate = 2 * size**3 / (tm["ms"] * 1e-3)
    if b.smoke:  # keep the floor arithmetic on H200 numbers: CPU ceilings mean nothing
        b.copy_bw, b.mm_rate = 4.3e12, 790e12
    b.record["ceilings"] = {"copy_GBps": round(b.copy_bw / 1e9, 1), "copy_ms": t, "bf16_matmul_TFLOPs": round(b.mm_rate / 1e12, 1),
                            "matmul_shape": [size, size, size], "matmul_ms": tm}
    print(f"   copy {b.copy_bw / 1e12:.2f} TB/s, bf16 matmul {b.mm_rate / 1e12:.0f} TFLOP/s", flush=True)


def read_ceilings(b: Bench) -> None:
    """The SMs' read rates from L2 and from HBM (bench/l2_probe.py): what bounds a gather."""
    if b.smoke:
        b.record["read_ceilings"] = {"skipped": "GPU only (a compiled streaming kernel)"}
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from l2_probe import read_ceilings as probe

    b.record["read_ceilings"] = result = probe(b.time_ms)
    print(f"   reads from L2 {result['l2_read_TBps']:.2f} TB/s, from HBM {result['hbm_read_TBps']:.2f} TB/s; random HBM "
          "segments " + ", ".join(f"{r['segment_bytes']} B {r['TBps']:.2f}" for r in result["hbm_random_segments"]),
          flush=True)


def decode_forward_case(b: Bench, n_rows, k, n_latents, width, methods, tag="sweep", weight_dtype=torch.bfloat16):
    n_rows, k, n_latents, width = b.shape(n_rows, k, n_latents, width)
    from workbench.kernels.decode import triton as decode_kernels

    gen = b.generator(n_rows * 7 + k)
    W = (torch.randn(n_latents, width, device=b.device, generator=gen) / math.sqrt(width)).to(weight_dtype)
    acts, idx = b.codes(n_rows, k, n_latents, gen)
    row = {"tag": tag, "N": n_rows, "k": k, "d_sae": n_latents, "d_in": width, "ms": {},
           "weights": str(weight_dtype).replace("torch.", "")}
    unique = int(torch.unique(idx).numel())
    w_bytes = W.element_size()
    floor_unique = b.floor_ms(unique * width * w_bytes + n_rows * width * 2 + n_rows * k * 10)
    floor_noreuse = b.floor_ms(n_rows * k * width * w_bytes + n_rows * width * 2 + n_rows * k * 10)
    row.update(unique_rows=unique, floor_ms=floor_unique, floor_no_reuse_ms=floor_noreuse)
    with torch.no_grad(), use("triton"):
        z = torch.zeros(n_rows, n_latents, device=b.device, dtype=torch.bfloat16).scatter_(1, idx, acts)
        W_mm = W.to(torch.bfloat16)  # the dense baseline multiplies in bf16 (autocast casts fp32 weights)
        expected = z @ W_mm
        ours = sparse_decode(acts, idx, W)
        row["rel_err_vs_dense"] = rel_err(ours, expected)
        if row["rel_err_vs_dense"] > 2e-2:
            raise AssertionError(f"decode output off: rel err {row['rel_err_vs_dense']:.3g} at {row}")
        runs = {
            "ours": lambda: sparse_decode(acts, idx, W),
            "dense": (lambda: z @ W_mm) if W.dtype == torch.bfloat16 else (lambda: z @ W.to(torch.bfloat16)),
            "embedding_bag": lambda: F.embedding_bag(idx, W_mm, per_sample_weights=acts, mode="sum"),
            "naive_triton": lambda: decode_kernels.gather_sum(acts, idx, W, config=NAIVE_CONFIG),
        }
        if "ours_unsorted" in methods:
            shuffled = torch.randperm(k, device=b.device, generator=gen)
            acts_u, idx_u = acts[:, shuffled].contiguous(), idx[:, shuffled].contiguous()
            runs["ours_unsorted"] = lambda: sparse_decode(acts_u, idx_u, W)
        for method in methods:
            if method == "ours_packed":
                # Inference with the packed copy of W (workbench.kernels.packed_decoders; the
                # copy is made by the first call and reused); what making it costs, beside.
                from workbench.kernels import packed_decoders
                from workbench.kernels.decode import packed as packing

                with packed_decoders():
                    row["rel_err_packed_vs_dense"] = rel_err(sparse_decode(acts, idx, W), expected)
                    if row["rel_err_packed_vs_dense"] > 2e-2:
                        raise AssertionError(f"packed decode output off: rel err {row['rel_err_packed_vs_dense']:.3g}")
                    row["ms"][method] = b.time_ms(lambda: sparse_decode(acts, idx, W))
                row["pack_ms"] = b.time_ms(lambda: packing.pack_rows(W))
                continue
            if method != "ours_unsorted" and method != "ours" and method not in runs:
                continue
            if method == "embedding_bag":
                row["rel_err_embedding_bag"] = rel_err(runs[method](), expected)
            row["ms"][method] = b.time_ms(runs[method])
    del z
    t = row["ms"]
    row["x_dense"] = t["dense"]["ms"] / t["ours"]["ms"] if "dense" in t else None
    if "ours_packed" in t and "dense" in t:
        row["x_dense_packed"] = t["dense"]["ms"] / t["ours_packed"]["ms"]
    row["floor_fraction"] = floor_unique / t["ours"]["ms"]
    row["dense_floor_ms"] = b.floor_ms((n_latents * width + n_rows * n_latents + n_rows * width) * 2, 2.0 * n_rows * n_latents * width)
    b.record["decode_forward"].append(row)
    shown = "  ".join(f"{m} {v['ms']:.4f}" for m, v in t.items())
    print(f"   fwd {tag:<5} N={n_rows:<6} k={k:<4} d_sae={n_latents:<7} d={width:<5} {shown}  "
          f"x_dense={row['x_dense'] or 0:.1f} floor={row['floor_fraction']:.2f}", flush=True)
    return row


def decode_backward_case(b: Bench, n_rows, k, n_latents, width, methods, tag="sweep", weight_dtype=torch.bfloat16):
    n_rows, k, n_latents, width = b.shape(n_rows, k, n_latents, width)
    gen = b.generator(n_rows * 11 + k)
    W = (torch.randn(n_latents, width, device=b.device, generator=gen) / math.sqrt(width)).to(weight_dtype)
    acts, idx = b.codes(n_rows, k, n_latents, gen)
    grad_y = torch.randn(n_rows, width, device=b.device, generator=gen).to(torch.bfloat16)
    row = {"tag": tag, "N": n_rows, "k": k, "d_sae": n_latents, "d_in": width, "ms": {}, "errors": {},
           "weights": str(weight_dtype).replace("torch.", "")}
    unique = int(torch.unique(idx).numel())
    w_bytes = W.element_size()
    # Read each named W row once, write all of d W_dec, read grad_y, write d acts.
    row["floor_ms"] = b.floor_ms(unique * width * w_bytes + n_latents * width * w_bytes + n_rows * width * 2 + n_rows * k * 12)
    with use("triton"):
        a_leaf = acts.clone().requires_grad_()
        W_leaf = W.clone().requires_grad_()
        y = sparse_decode(a_leaf, idx, W_leaf)
        ours = lambda: torch.autograd.grad(y, (a_leaf, W_leaf), grad_y, retain_graph=True)  # noqa: E731
        d_acts, d_W = ours()
        # Check against the dense formulas before timing (d acts: weights as the kernel rounds them).
        want_acts = (grad_y.float() @ W.to(torch.bfloat16).float().t()).gather(1, idx)
        row["rel_err_d_acts"] = rel_err(d_acts, want_acts)
        sample = torch.unique(idx)[: min(4096, unique)]
        z32 = torch.zeros(n_rows, n_latents, device=b.device).scatter_(1, idx, acts.float())
        want_W = z32[:, sample].t() @ grad_y.float()
        row["rel_err_d_W"] = rel_err(d_W[sample], want_W)
        del z32, want_acts, want_W
        if max(row["rel_err_d_acts"], row["rel_err_d_W"]) > 2e-2:
            raise AssertionError(f"decode backward off: {row}")
        runs = {"ours": ours}
        if "dense" in methods:
            z = torch.zeros(n_rows, n_latents, device=b.device, dtype=torch.bfloat16).scatter_(1, idx, acts).requires_grad_()
            W_dense = W.clone().requires_grad_()
            y_dense = z @ W_dense.to(torch.bfloat16)  # autocast's layout for fp32 weights
            runs["dense"] = lambda: torch.autograd.grad(y_dense, (z, W_dense), grad_y, retain_graph=True)
        if "torch_gather" in methods and n_rows * k * width * 2 <= 2.5e9 and W.dtype == torch.bfloat16:
            a2, W2 = acts.clone().requires_grad_(), W.clone().requires_grad_()
            y_gather = (a2.unsqueeze(2) * W2[idx]).sum(1)
            runs["torch_gather"] = lambda: torch.autograd.grad(y_gather, (a2, W2), grad_y, retain_graph=True)
        if "embedding_bag" in methods and W.dtype == torch.bfloat16:
            a3, W3 = acts.clone().requires_grad_(), W.clone().requires_grad_()
            try:
                y_bag = F.embedding_bag(idx, W3, per_sample_weights=a3, mode="sum")
                torch.autograd.grad(y_bag, (a3, W3), grad_y, retain_graph=True)
                runs["embedding_bag"] = lambda: torch.autograd.grad(y_bag, (a3, W3), grad_y, retain_graph=True)
            except Exception as error:  # noqa: BLE001 (the known gap: no bf16 backward on CUDA)
                row["errors"]["embedding_bag"] = f"{type(error).__name__}: {str(error)[:200]}"
        for method, fn in runs.items():
            row["ms"][method] = b.time_ms(fn)
    t = row["ms"]
    row["x_dense"] = t["dense"]["ms"] / t["ours"]["ms"] if "dense" in t else None
    row["floor_fraction"] = row["floor_ms"] / t["ours"]["ms"]
    b.record["decode_backward"].append(row)
    shown = "  ".join(f"{m} {v['ms']:.4f}" for m, v in t.items())
    print(f"   bwd {tag:<5} N={n_rows:<6} k={k:<4} d_sae={n_latents:<7} d={width:<5} {shown}  "
          f"x_dense={row['x_dense'] or 0:.1f} floor={row['floor_fraction']:.2f}", flush=True)
    return row


def latency_n1(b: Bench) -> None:
    # The one-token rows run after the batch sections: their kernel is launched directly
    # (workbench.kernels.launch), the newest code path, so anything it might break comes last.
    decode_forward_case(b, 1, GOAL["k"], GOAL["n_latents"], GOAL["width"], GOAL_METHODS, tag="goal")
    _, k, n_latents, width = b.shape(1, GOAL["k"], GOAL["n_latents"], GOAL["width"])
    gen = b.generator(5)
    W = (torch.randn(n_latents, width, device=b.device, generator=gen) / math.sqrt(width)).to(torch.bfloat16)
    acts, idx = b.codes(1, k, n_latents, gen)
    z = torch.zeros(1, n_latents, device=b.device, dtype=torch.bfloat16).scatter_(1, idx, acts)
    a_grad = acts.clone().requires_grad_()
    with use("triton"):
        calls = {
            "ours_no_grad": lambda: sparse_decode(acts, idx, W),
            "ours_custom_op_with_autograd": lambda: sparse_decode(a_grad, idx, W),
            "embedding_bag": lambda: F.embedding_bag(idx, W, per_sample_weights=acts, mode="sum"),
            "dense": lambda: z @ W,
        }
        for name, fn in calls.items():
            grad_ctx = torch.enable_grad() if "autograd" in name else torch.no_grad()
            with grad_ctx:
                entry = {"method": name, "event_ms": b.time_ms(fn), "host_loop_us_per_call": b.host_loop_us(fn)}
            if name == "ours_no_grad" and torch.cuda.is_available():
                from workbench.kernels.decode import triton as decode_kernels

                entry["one_token_plan"] = decode_kernels.lean_signature(acts, idx, W, None) in decode_kernels._LEAN_PLANS
                entry["plans_off"] = list(decode_kernels._lean_off)
                with grad_ctx:  # the plan alone, without the public function's checks and dispatch
                    entry["lean_decode_host_loop_us"] = b.host_loop_us(
                        lambda: decode_kernels.lean_decode(acts, idx, W, None))
                    entry["torch_add_host_loop_us"] = b.host_loop_us(lambda: torch.add(acts, 1))  # the host's speed
            b.record["latency_n1"].append(entry)
            print(f"   N=1 {name:<30} median {entry['event_ms']['ms'] * 1e3:8.2f} us   host loop "
                  f"{entry['host_loop_us_per_call']:8.2f} us/call", flush=True)
            if "lean_decode_host_loop_us" in entry:
                print(f"       the plan alone {entry['lean_decode_host_loop_us']:.2f} us/call, torch.add "
                      f"{entry['torch_add_host_loop_us']:.2f} us/call", flush=True)


def latency_fresh_process(b: Bench) -> None:
    """The one-token figures again from a fresh process (bench/one_token_latency.py): this
    process runs every small op slower after the sections before (see that script)."""
    if b.smoke:
        return
    script = Path(__file__).resolve().parent / "one_token_latency.py"
    done = subprocess.run([sys.executable, str(script), "--pieces"], capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {done.stderr[-2000:]}")
    b.record["latency_n1_fresh_process"] = fresh = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"   fresh process: sparse_decode {fresh['public_sparse_decode_us']:.2f} us/call, plan alone "
          f"{fresh['lean_decode_us']:.2f}, torch.add {fresh['torch_add_us']:.2f}", flush=True)
    print(done.stderr, end="", flush=True)


def topk_select(b: Bench) -> None:
    from workbench.kernels.encode import triton as encode_kernels

    for n_latents in (65536, 131072):
        n_rows, k, n_latents, _ = b.shape(4096, 64, n_latents, 1)
        k_aux = min(1152, n_latents // 8)
        gen = b.generator(n_latents)
        pre = torch.randn(n_rows, n_latents, device=b.device, generator=gen).to(torch.bfloat16)
        dead = torch.rand(n_latents, device=b.device, generator=gen) < 0.2
        with use("triton"):
            vals, idx = encode_kernels.select_topk(pre, k, absolute=False)
            want = pre.topk(k, dim=1).values.sort(dim=1).values
            if not torch.equal(vals.sort(dim=1).values, want.clamp_min(0)):
                raise AssertionError("top-k values differ from torch.topk")
            aux_vals, _ = encode_kernels.select_topk(pre, k_aux, False, mask=dead)
            want_aux = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1).values.clamp_min(0)
            if not torch.equal(aux_vals.sort(dim=1).values, want_aux.sort(dim=1).values):
                raise AssertionError("aux top-k values differ from a masked torch.topk")
            row = {"N": n_rows, "d_sae": n_latents, "k": k, "k_aux": k_aux, "dead_fraction": 0.2, "ms": {
                "ours": b.time_ms(lambda: encode_kernels.select_topk(pre, k, absolute=False)),
                "torch_topk": b.time_ms(lambda: pre.topk(k, dim=1, sorted=False)),
                "ours_aux": b.time_ms(lambda: encode_kernels.select_topk(pre, k_aux, False, mask=dead)),
                "torch_masked_topk_aux": b.time_ms(
                    lambda: pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1, sorted=False)),
            }}
        row["floor_ms"] = b.floor_ms(pre.numel() * 2 + n_rows * k * 10)
        row["x_torch"] = row["ms"]["torch_topk"]["ms"] / row["ms"]["ours"]["ms"]
        row["aux_x_torch"] = row["ms"]["torch_masked_topk_aux"]["ms"] / row["ms"]["ours_aux"]["ms"]
        row["floor_fraction"] = row["floor_ms"] / row["ms"]["ours"]["ms"]
        b.record["topk_select"].append(row)
        print(f"   topk [{n_rows}, {n_latents}] k={k}: ours {row['ms']['ours']['ms']:.4f}  torch {row['ms']['torch_topk']['ms']:.4f} "
              f"x{row['x_torch']:.2f}  floor={row['floor_fraction']:.2f};  aux k={k_aux}: ours {row['ms']['ours_aux']['ms']:.4f} "
              f"masked torch {row['ms']['torch_masked_topk_aux']['ms']:.4f} x{row['aux_x_torch']:.2f}", flush=True)
        del pre


def aux_decode(b: Bench) -> None:
    """AuxK's decode in the training step: 1152 slots per token over the dead latents (dense route)."""
    from workbench.kernels.decode import dense
    from workbench.kernels.decode import triton as decode_kernels

    n_rows, k, n_latents, width = b.shape(4096, 1152, 65536, 2304)
    gen = b.generator(11)
    W = torch.randn(n_latents, width, device=b.device, generator=gen) / math.sqrt(width)  # fp32, as trained
    dead = torch.nonzero(torch.rand(n_latents, device=b.device, generator=gen) < 0.2).squeeze(1)
    k = min(k, dead.numel())
    keys = torch.rand(n_rows, dead.numel(), device=b.device, generator=gen)
    idx = dead[keys.topk(k, dim=1).indices].sort(dim=1).values
    del keys
    acts = (torch.rand(n_rows, k, device=b.device, generator=gen) + 0.1).to(torch.bfloat16)
    grad_y = torch.randn(n_rows, width, device=b.device, generator=gen).to(torch.bfloat16)
    row = {"N": n_rows, "k": k, "d_sae": n_latents, "d_in": width, "dead": int(dead.numel()), "ms": {}}
    with use("triton"):
        ours = sparse_decode(acts, idx, W)
        gather = decode_kernels.gather_sum(acts, idx, W, config=decode_kernels.GATHER_TILES_LARGE.candidates[0])
        row["rel_err_dense_vs_gather"] = rel_err(ours, gather)
        if row["rel_err_dense_vs_gather"] > 2e-2:
            raise AssertionError(f"aux decode: dense route off by {row['rel_err_dense_vs_gather']:.3g}")
        a_leaf, W_leaf = acts.clone().requires_grad_(), W.clone().requires_grad_()
        y = sparse_decode(a_leaf, idx, W_leaf)
        row["ms"]["ours_forward"] = b.time_ms(lambda: sparse_decode(acts, idx, W))
        row["ms"]["gather_forward"] = b.time_ms(
            lambda: decode_kernels.gather_sum(acts, idx, W, config=decode_kernels.GATHER_TILES_LARGE.candidates[0]))
        row["ms"]["ours_backward"] = b.time_ms(lambda: torch.autograd.grad(y, (a_leaf, W_leaf), grad_y, retain_graph=True))
        saved = dense.DENSE_MIN_K
        dense.DENSE_MIN_K = 1 << 30  # the Triton scatter for comparison
        try:
            row["ms"]["scatter_backward"] = b.time_ms(
                lambda: decode_kernels.decode_backward(grad_y, acts, idx, W, True, True), rep_ms=30)
        finally:
            dense.DENSE_MIN_K = saved
    b.record["aux_decode"] = row
    print("   aux decode " + "  ".join(f"{m} {v['ms']:.4f}" for m, v in row["ms"].items()), flush=True)


def tuning_report(b: Bench) -> None:
    """The configs each tuner chose per shape key, and any it rejected (outputs disagreeing)."""
    from workbench.kernels.decode import triton as decode_kernels
    from workbench.kernels.encode import triton as encode_kernels

    tuners = [decode_kernels.GATHER_TILES_LARGE, decode_kernels.GATHER_TILES_SMALL, decode_kernels.GATHER_SLOTS,
              decode_kernels.GATHER_DOT, decode_kernels.SCATTER_ROWS, encode_kernels.TRANSPOSE_CAST]
    report = {}
    for tuner in tuners:
        report[tuner.name] = {
            "chosen": [{"key": str(key), "config": config} for key, config in tuner.chosen.items()],
            "rejected": [{"key": str(key), "configs": configs} for key, configs in tuner.rejected.items()],
            "timed": [{"key": str(key), "ms": [{"config": config, "ms": ms} for config, ms in timed]}
                      for key, timed in tuner.timings.items()],
        }
    from workbench.kernels.encode import select

    report["direct_launch_enabled"] = decode_kernels._SLOTS_LAUNCH.enabled
    report["topk_routes"] = [{"key": str(key), "route": list(route)} for key, route in select._routes.items()]
    b.record["tuning"] = report
    rejected = sum(len(r["rejected"]) for r in report.values() if isinstance(r, dict))
    for entry in report["topk_routes"]:
        print(f"   top-k route {entry['key']}: {entry['route']}", flush=True)
    print(f"   {sum(len(r['chosen']) for r in report.values() if isinstance(r, dict))} tuned keys, {rejected} with "
          f"rejected configs; direct launch {'on' if report['direct_launch_enabled'] else 'OFF'}", flush=True)


def encode_case(b: Bench) -> None:
    n_rows, k, n_latents, d_in = b.shape(ENCODER["n_rows"], ENCODER["k"], ENCODER["n_latents"], ENCODER["d_in"])
    k_aux = min(ENCODER["k_aux"], n_latents // 8)
    gen = b.generator(9)
    # The training layout: bf16 activations (autocast), fp32 weights; torch's side pays the
    # weight cast as autocast would.
    x = torch.randn(n_rows, d_in, device=b.device, generator=gen).to(torch.bfloat16)
    W_enc = torch.randn(d_in, n_latents, device=b.device, generator=gen) / math.sqrt(d_in)
    b_enc = torch.zeros(n_latents, device=b.device)
    dead = torch.rand(n_latents, device=b.device, generator=gen) < 0.2
    row = {"N": n_rows, "d_in": d_in, "d_sae": n_latents, "k": k, "k_aux": k_aux, "ms": {}, "weights": "float32"}

    def torch_forward(aux: bool):
        pre = torch.addmm(b_enc.to(x.dtype), x, W_enc.to(x.dtype))
        vals, idx = pre.topk(k, dim=1, sorted=False)
        if aux:
            pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1, sorted=False)
        return vals.relu(), idx

    with torch.no_grad(), use("triton"):
        row["ms"]["ours_forward"] = b.time_ms(lambda: topk_encode(x, W_enc, b_enc, k))
        row["ms"]["torch_forward"] = b.time_ms(lambda: torch_forward(False))
        row["ms"]["ours_forward_auxk"] = b.time_ms(lambda: topk_encode(x, W_enc, b_enc, k, dead_mask=dead, k_aux=k_aux))
        row["ms"]["torch_forward_auxk"] = b.time_ms(lambda: torch_forward(True))
        row["ms"]["gemm_only"] = b.time_ms(lambda: torch.addmm(b_enc.to(x.dtype), x, W_enc.to(x.dtype)))
    # Backward: ours (dx, dW_enc, db_enc from the selected slots) against dense autograd.
    with use("triton"):
        leaves = [t.clone().requires_grad_() for t in (x, W_enc, b_enc)]
        vals, idx, _, _ = topk_encode(*leaves, k)
        grad = torch.randn(vals.shape, device=b.device, generator=gen).to(vals.dtype)
        ours = lambda: torch.autograd.grad(vals, leaves, grad, retain_graph=True)  # noqa: E731
        got = ours()
        dense_leaves = [t.clone().requires_grad_() for t in (x, W_enc, b_enc)]
        pre = torch.addmm(dense_leaves[2].to(x.dtype), dense_leaves[0], dense_leaves[1].to(x.dtype))
        dense_vals = pre.gather(1, idx).relu()
        dense = lambda: torch.autograd.grad(dense_vals, dense_leaves, grad, retain_graph=True)  # noqa: E731
        want = dense()
        row["rel_err_backward"] = {name: rel_err(g, w) for name, g, w in zip(("dx", "dW_enc", "db_enc"), got, want)}
        if max(row["rel_err_backward"].values()) > 2e-2:
            raise AssertionError(f"encoder backward off: {row['rel_err_backward']}")
        row["ms"]["ours_backward"] = b.time_ms(ours)
        row["ms"]["dense_backward"] = b.time_ms(dense)
    gemm_flops = 2.0 * n_rows * d_in * n_latents
    row["forward_floor_ms"] = b.floor_ms(0, gemm_flops) + b.floor_ms(n_rows * n_latents * 2 * 2)  # GEMM + write/read pre once
    row["backward_floor_ms"] = b.floor_ms(n_latents * d_in * 2 + n_latents * d_in * 4 + n_rows * d_in * 4)  # read the bf16 table once, write the fp32 dW_enc
    row["forward_floor_fraction"] = row["forward_floor_ms"] / row["ms"]["ours_forward"]["ms"]
    row["backward_floor_fraction"] = row["backward_floor_ms"] / row["ms"]["ours_backward"]["ms"]
    b.record["encode"].append(row)
    print("   encode " + "  ".join(f"{m} {v['ms']:.4f}" for m, v in row["ms"].items()), flush=True)


GOAL_METHODS = ["ours", "ours_packed", "ours_unsorted", "dense", "embedding_bag", "naive_triton"]


def goal_shapes(b: Bench) -> None:
    for n_rows in (4096, 16384):
        decode_forward_case(b, n_rows, GOAL["k"], GOAL["n_latents"], GOAL["width"], GOAL_METHODS, tag="goal")
    decode_backward_case(b, 4096, GOAL["k"], GOAL["n_latents"], GOAL["width"], ["dense", "torch_gather", "embedding_bag"], tag="goal")
    # The training step's layout: fp32 weights under bf16 codes (autocast), d_sae 65536, d_in 2304.
    decode_forward_case(b, 4096, 64, 65536, 2304, ["ours", "dense"], tag="train", weight_dtype=torch.float32)
    decode_backward_case(b, 4096, 64, 65536, 2304, ["dense"], tag="train", weight_dtype=torch.float32)


def l2_gather_ceiling(b: Bench) -> None:
    """How fast gathered rows can arrive when every row is an L2 hit: a 16 MB table, N=4096, k=64.

    Gathered bytes over time for the goal shape, set against this, say whether the decode
    is limited by HBM (reuse) or by moving the gathered segments from L2 to the SMs.
    """
    n_rows, k, n_latents, width = b.shape(4096, 64, 8192, 1024)
    gen = b.generator(13)
    W = (torch.randn(n_latents, width, device=b.device, generator=gen) / math.sqrt(width)).to(torch.bfloat16)
    acts, idx = b.codes(n_rows, k, n_latents, gen)
    with torch.no_grad(), use("triton"):
        t = b.time_ms(lambda: sparse_decode(acts, idx, W))
    gathered = n_rows * k * width * 2
    row = {"N": n_rows, "k": k, "d_sae": n_latents, "d_in": width, "table_MB": W.numel() * 2 / 2**20, "ms": t,
           "gathered_TBps": gathered / (t["ms"] * 1e-3) / 1e12}
    goal = next((r for r in b.record["decode_forward"] if r.get("tag") == "goal" and r["N"] == 4096), None)
    if goal:
        row["goal_shape_gathered_TBps"] = goal["N"] * goal["k"] * goal["d_in"] * 2 / (goal["ms"]["ours"]["ms"] * 1e-3) / 1e12
    b.record["l2_gather_ceiling"] = row
    print(f"   L2-resident gather: {t['ms']:.4f} ms = {row['gathered_TBps']:.2f} TB/s of gathered rows"
          + (f"; goal shape moves {row['goal_shape_gathered_TBps']:.2f} TB/s" if goal else ""), flush=True)


def sweep(b: Bench) -> None:
    done = {(r["N"], r["k"], r["d_sae"], r["d_in"]) for r in b.record["decode_forward"]}
    for n_latents in (131072, 16384):
        for width in (4096, 2304, 576):
            for k in (64, 32, 128):
                for n_rows in (4096, 16384, 1):
                    if b.left_s() < b.args.reserve_s:
                        b.record["skipped"].append({"N": n_rows, "k": k, "d_sae": n_latents, "d_in": width, "why": "time budget"})
                        continue
                    if b.shape(n_rows, k, n_latents, width) in done:
                        continue
                    decode_forward_case(b, n_rows, k, n_latents, width, ["ours", "dense"] + (["naive_triton"] if n_rows > 1 else []))
                    done.add(b.shape(n_rows, k, n_latents, width))
                backward_done = {(r["N"], r["k"], r["d_sae"], r["d_in"]) for r in b.record["decode_backward"]}
                if b.left_s() >= b.args.reserve_s and b.shape(4096, k, n_latents, width) not in backward_done:
                    decode_backward_case(b, 4096, k, n_latents, width, ["dense"])
                b.save()


def goals(b: Bench) -> None:
    def find(rows, **match):
        shape = b.shape(match["N"], GOAL["k"], GOAL["n_latents"], GOAL["width"])
        for row in rows:
            if (row["N"], row["k"], row["d_sae"], row["d_in"]) == shape and row.get("tag") == "goal":
                return row
        return None

    result = {}
    fwd4k, fwd16k = find(b.record["decode_forward"], N=4096), find(b.record["decode_forward"], N=16384)
    bwd = find(b.record["decode_backward"], N=4096)
    if fwd4k:
        naive = fwd4k["ms"].get("naive_triton", {}).get("ms")
        result["G1_decode_fwd_N4096_x_dense"] = {"value": fwd4k["x_dense"], "target": 20, "met": fwd4k["x_dense"] >= 20,
                                                 "x_naive_gather": naive / fwd4k["ms"]["ours"]["ms"] if naive else None,
                                                 "floor_fraction": fwd4k["floor_fraction"],
                                                 "packed_value": fwd4k.get("x_dense_packed"),
                                                 "packed_met": (fwd4k.get("x_dense_packed") or 0) >= 20,
                                                 "pack_ms": fwd4k.get("pack_ms", {}).get("ms")}
        l2_rate = b.record.get("read_ceilings", {}).get("l2_read_TBps")
        if l2_rate:
            # Every (token, slot) segment crosses from L2 to an SM once: the bound when all
            # repeats are L2 hits and the HBM reads overlap completely.
            gathered = fwd4k["N"] * fwd4k["k"] * fwd4k["d_in"] * 2
            bound_ms = gathered / (l2_rate * 1e12) * 1e3
            result["G1_decode_fwd_N4096_x_dense"].update(
                l2_read_bound_ms=bound_ms, l2_read_bound_x_dense=fwd4k["ms"]["dense"]["ms"] / bound_ms,
                fraction_of_l2_read_bound=bound_ms / fwd4k["ms"]["ours"]["ms"])
    if fwd16k:
        result["G2_decode_fwd_N16384_x_dense"] = {"value": fwd16k["x_dense"], "target": 40, "met": fwd16k["x_dense"] >= 40,
                                                  "floor_fraction": fwd16k["floor_fraction"],
                                                  "packed_value": fwd16k.get("x_dense_packed")}
    if bwd:
        result["G4_decode_bwd_N4096_x_dense_bwd"] = {"value": bwd["x_dense"], "target": 10, "met": bwd["x_dense"] >= 10,
                                                     "bwd_over_own_fwd": bwd["ms"]["ours"]["ms"] / fwd4k["ms"]["ours"]["ms"] if fwd4k else None,
                                                     "floor_fraction": bwd["floor_fraction"]}
    lean = [r for r in b.record["latency_n1"] if r["method"] == "ours_no_grad"]
    fresh = b.record.get("latency_n1_fresh_process")
    if lean:
        # The figure is the fresh process's (an interactive session); this process's is kept beside it.
        in_process = lean[0]["host_loop_us_per_call"]
        us = fresh["public_sparse_decode_us"] if fresh else in_process
        result["G3_decode_N1_us_including_dispatch"] = {
            "value": us, "target": 15, "met": us <= 15, "measured_in": "fresh process" if fresh else "this process",
            "event_median_us": lean[0]["event_ms"]["ms"] * 1e3, "in_benchmark_process_us": in_process,
            "torch_add_us": fresh["torch_add_us"] if fresh else lean[0].get("torch_add_host_loop_us"),
            "torch_add_in_benchmark_process_us": lean[0].get("torch_add_host_loop_us")}
    b.record["goals"] = result


def print_table(b: Bench) -> None:
    r = b.record
    print("\n" + "=" * 100)
    print(f"{r['machine']['device']}  torch {r['machine']['torch']}  triton {r['machine']['triton']}  "
          f"copy {r['ceilings'].get('copy_GBps', '?')} GB/s  bf16 mm {r['ceilings'].get('bf16_matmul_TFLOPs', '?')} TFLOP/s")
    print(f"{'op':<8}{'N':>6}{'k':>5}{'d_sae':>8}{'d_in':>6} {'ours ms':>9} {'dense ms':>9} {'x dense':>8} {'floor':>6}  others")
    for kind in ("decode_forward", "decode_backward"):
        for row in r[kind]:
            if row.get("tag") not in ("goal", "train") and not b.args.full_table:
                continue
            t = row["ms"]
            others = "  ".join(f"{m}={v['ms']:.4f}" for m, v in t.items() if m not in ("ours", "dense"))
            print(f"{kind[7:10]:<8}{row['N']:>6}{row['k']:>5}{row['d_sae']:>8}{row['d_in']:>6} {t['ours']['ms']:>9.4f} "
                  f"{t.get('dense', {}).get('ms', float('nan')):>9.4f} {row['x_dense'] or float('nan'):>8.1f} "
                  f"{row['floor_fraction']:>6.2f}  {others}")
    sweep_rows = [row for row in r["decode_forward"] if row.get("tag") == "sweep"]
    if sweep_rows:
        xs = [row["x_dense"] for row in sweep_rows if row["x_dense"] and row["N"] == 4096]
        print(f"sweep: {len(sweep_rows)} forward shapes; at N=4096 x dense min {min(xs, default=float('nan')):.1f} "
              f"max {max(xs, default=float('nan')):.1f}; {len(r['decode_backward']) - 1} backward shapes")
    for row in r["topk_select"]:
        print(f"topk [{row['N']}, {row['d_sae']}] k={row['k']}: ours {row['ms']['ours']['ms']:.4f} ms, torch.topk "
              f"{row['ms']['torch_topk']['ms']:.4f} ms (x{row['x_torch']:.2f}), floor {row['floor_fraction']:.2f}; "
              f"aux k={row['k_aux']}: ours {row['ms']['ours_aux']['ms']:.4f}, masked torch.topk "
              f"{row['ms']['torch_masked_topk_aux']['ms']:.4f} (x{row['aux_x_torch']:.2f})")
    if r.get("l2_gather_ceiling"):
        c = r["l2_gather_ceiling"]
        print(f"gathered rows from an L2-resident table: {c['gathered_TBps']:.2f} TB/s"
              + (f"; the goal shape moved {c['goal_shape_gathered_TBps']:.2f} TB/s" if "goal_shape_gathered_TBps" in c else ""))
    if r.get("aux_decode"):
        t = r["aux_decode"]["ms"]
        print(f"aux decode N={r['aux_decode']['N']} k={r['aux_decode']['k']} over {r['aux_decode']['dead']} dead: "
              + "  ".join(f"{m} {v['ms']:.3f}" for m, v in t.items()))
    for row in r["encode"]:
        t = row["ms"]
        print(f"encode N={row['N']} {row['d_in']}->{row['d_sae']} k={row['k']}: fwd ours {t['ours_forward']['ms']:.3f} / torch "
              f"{t['torch_forward']['ms']:.3f} (GEMM alone {t['gemm_only']['ms']:.3f}); with AuxK {t['ours_forward_auxk']['ms']:.3f} / "
              f"{t['torch_forward_auxk']['ms']:.3f}; bwd ours {t['ours_backward']['ms']:.3f} / dense {t['dense_backward']['ms']:.3f}")
    for row in r["latency_n1"]:
        print(f"N=1 {row['method']:<30} {row['event_ms']['ms'] * 1e3:8.2f} us (events)  {row['host_loop_us_per_call']:8.2f} us/call (host loop)")
    for name, goal in r["goals"].items():
        print(f"{name}: {goal['value']:.2f} (target {goal['target']}) {'MET' if goal['met'] else 'not met'}")
        if "l2_read_bound_x_dense" in goal:
            print(f"   bound from the L2 read rate: {goal['l2_read_bound_ms']:.3f} ms = {goal['l2_read_bound_x_dense']:.1f}x dense; "
                  f"ours reaches {goal['fraction_of_l2_read_bound']:.2f} of it")
    print(f"errors: {len(r['errors'])}  skipped sweep shapes: {len(r['skipped'])}  elapsed {r.get('elapsed_s')} s  -> {b.out_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default=None, help="JSON file name (default kernels-<gpu>.json)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop starting sweep shapes after this")
    parser.add_argument("--reserve-s", type=float, default=45.0, help="time kept for the last sections")
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: checks the script runs")
    parser.add_argument("--full-table", action="store_true", help="print every sweep row, not only the goal shapes")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA GPU (or --smoke on CPU)")
    if args.name is None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu-smoke"
        args.name = "kernels-" + ("h200" if "H200" in gpu else "".join(c if c.isalnum() else "-" for c in gpu.lower())) + ".json"
    b = Bench(args)
    b.section("ceilings", lambda: ceilings(b))
    b.section("read ceilings", lambda: read_ceilings(b))
    b.section("goal shapes (decode)", lambda: goal_shapes(b))
    b.section("top-k selection", lambda: topk_select(b))
    b.section("encoder", lambda: encode_case(b))
    b.section("AuxK decode", lambda: aux_decode(b))
    b.section("L2 gather ceiling", lambda: l2_gather_ceiling(b))
    b.section("one-token latency", lambda: latency_n1(b))
    b.section("one-token latency, fresh process", lambda: latency_fresh_process(b))
    b.section("sweep", lambda: sweep(b))
    b.section("goals", lambda: goals(b))
    b.section("tuning", lambda: tuning_report(b))
    print_table(b)


if __name__ == "__main__":
    main()
