"""Compile every Triton kernel config for an H100/H200 (sm_90) on a machine without a GPU.

Runs each launcher of workbench.kernels on `meta` tensors of the benchmark's shapes with
every candidate launch config forced in turn, records the arguments the launcher would pass
(instead of launching), compiles that exact specialization for sm_90 with Triton's own
compiler and bundled ptxas, and reports registers, spills and shared memory per config.
A config that fails here would fail on the GPU too; spills mean a config will be slow.

    python bench/check_kernels_compile.py            # table on stdout, JSON to bench/results/
    python bench/check_kernels_compile.py --quick    # first config of each kernel only

Needs TRITON_INTERPRET unset (real compilation); nothing runs on a device.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("unset TRITON_INTERPRET: this script compiles for the GPU")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.atomic import write_json  # noqa: E402
from workbench.kernels.decode import triton as decode_kernels  # noqa: E402
from workbench.kernels.encode import select as select_kernels  # noqa: E402
from workbench.kernels.encode import triton as encode_kernels  # noqa: E402
from workbench.kernels.tuning import Tuner, force_config  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
_TYPE_NAMES = {
    torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
    torch.int64: "i64", torch.int32: "i32", torch.bool: "i1",
}


class Recorder:
    """Stands in for JITFunction.run: keeps the launch arguments instead of launching."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __call__(self, *args, grid, warmup, **kwargs):
        self.calls.append((args, kwargs))


def signature_of(kernel, args: tuple, kwargs: dict):
    """(signature, constexprs, attrs, options) as triton's JIT would specialise this call."""
    names = kernel.arg_names
    values = dict(zip(names, args))
    options = {name: kwargs.pop(name) for name in ("num_warps", "num_stages") if name in kwargs}
    values.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        value = values[param.name] if param.name in values else param.default  # defaults as the JIT binds them
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TYPE_NAMES[value.dtype]
            if not param.do_not_specialize_on_alignment:
                attrs[(index,)] = [["tt.divisibility", 16]]  # torch allocations are 256-byte aligned
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int) and param.do_not_specialize:
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, int):
            if value == 1:  # triton specialises ints equal to 1 into constants
                signature[param.name], constexprs[param.name] = "constexpr", 1
            else:
                signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        elif value is None:
            signature[param.name], constexprs[param.name] = "constexpr", None
        else:
            raise TypeError(f"{param.name}: cannot specialise {type(value)}")
    return signature, constexprs, attrs, options


def ptxas_report(ptx: str) -> dict:
    """Registers, spills and static shared memory of one kernel, from ptxas -v."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.ptx"
        path.write_text(ptx)
        result = subprocess.run(
            [str(PTXAS), "-v", "--gpu-name", "sm_90a", str(path), "-o", str(Path(folder) / "kernel.cubin")],
            capture_output=True, text=True,
        )
    text = result.stdout + result.stderr
    grab = lambda pattern: int(m.group(1)) if (m := re.search(pattern, text)) else -1  # noqa: E731
    return {
        "registers": grab(r"Used (\d+) registers"),
        "spill_stores": grab(r"(\d+) bytes spill stores"),
        "spill_loads": grab(r"(\d+) bytes spill loads"),
        "stack_frame": grab(r"(\d+) bytes stack frame"),
    }


def compile_call(kernel, args, kwargs) -> dict:
    signature, constexprs, attrs, options = signature_of(kernel, args, dict(kwargs))
    started = time.perf_counter()
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGET, options=options)
    report = ptxas_report(compiled.asm["ptx"])
    report.update(shared_bytes=compiled.metadata.shared, compile_s=round(time.perf_counter() - started, 2))
    return report


def scenarios(quick: bool):
    """(name, tuner, launch()) for each launcher at the benchmark's shapes, on meta tensors."""
    meta = torch.device("meta")
    bf16, f32 = torch.bfloat16, torch.float32

    def decode_fwd(n, d_sae, d, k, wdtype=bf16):
        return lambda: decode_kernels.decode_forward(
            torch.empty(n, k, dtype=bf16, device=meta), torch.empty(n, k, dtype=torch.long, device=meta),
            torch.empty(d_sae, d, dtype=wdtype, device=meta), torch.empty(d, dtype=bf16, device=meta))

    def decode_fwd_packed(n, d_sae, d, k):
        blocks = -(-d // decode_kernels.packed.PACK_WIDTH)
        return lambda: decode_kernels.gather_sum(
            torch.empty(n, k, dtype=bf16, device=meta), torch.empty(n, k, dtype=torch.long, device=meta),
            torch.empty(d_sae, d, dtype=bf16, device=meta), torch.empty(d, dtype=bf16, device=meta), bf16,
            packed_table=torch.empty(blocks, d_sae, decode_kernels.packed.PACK_WIDTH, dtype=bf16, device=meta))

    def decode_bwd(n, d_sae, d, k, need_weight=True, wdtype=bf16):
        return lambda: decode_kernels.decode_backward(
            torch.empty(n, d, dtype=bf16, device=meta), torch.empty(n, k, dtype=bf16, device=meta),
            torch.empty(n, k, dtype=torch.long, device=meta), torch.empty(d_sae, d, dtype=wdtype, device=meta),
            True, need_weight)

    def encode_bwd(n, d_in, d_sae, k, gdtype=bf16, wdtype=f32):
        def launch():
            W_enc = torch.empty(d_in, d_sae, dtype=wdtype, device=meta)
            parts = [(torch.empty(n, k, dtype=gdtype, device=meta), torch.empty(n, k, dtype=torch.long, device=meta))]
            x = torch.empty(n, d_in, dtype=gdtype, device=meta)
            return encode_kernels.encode_backward(parts, x, W_enc, encode_kernels.encoder_table(W_enc, gdtype))
        return launch

    def table(d_in, d_sae, src=f32, dst=bf16):
        return lambda: encode_kernels.transpose_cast(torch.empty(d_in, d_sae, dtype=src, device=meta), dst)

    def collect(n, d_sae, k, dtype):
        def launch():
            try:
                select_kernels._filtered_topk(torch.empty(n, d_sae, dtype=dtype, device=meta), k, 256)
            except (RuntimeError, NotImplementedError):
                pass  # its host-side overflow check cannot read meta tensors; the launch is recorded
        return launch

    one_config = Tuner("collect_candidates", [dict(BLOCK=select_kernels.FILTER_BLOCK, num_warps=4)])

    items = [
        ("decode fwd N=1", decode_kernels.GATHER_SLOTS, decode_fwd(1, 131072, 4096, 64)),
        ("decode fwd N=1 W fp32", decode_kernels.GATHER_SLOTS, decode_fwd(1, 65536, 2304, 64, f32)),
        ("decode fwd N=64", decode_kernels.GATHER_TILES_SMALL, decode_fwd(64, 131072, 4096, 64)),
        ("decode fwd N=4096", decode_kernels.GATHER_TILES_LARGE, decode_fwd(4096, 131072, 4096, 64)),
        ("decode fwd N=4096 W fp32", decode_kernels.GATHER_TILES_LARGE, decode_fwd(4096, 65536, 2304, 64, f32)),
        ("decode fwd N=4096 packed", decode_kernels.GATHER_TILES_PACKED, decode_fwd_packed(4096, 131072, 4096, 64)),
        ("decode bwd N=4096", decode_kernels.SCATTER_ROWS, decode_bwd(4096, 131072, 4096, 64)),
        ("decode bwd W fp32", decode_kernels.SCATTER_ROWS, decode_bwd(4096, 65536, 2304, 64, wdtype=f32)),
        ("decode bwd d_acts only", decode_kernels.GATHER_DOT, decode_bwd(4096, 131072, 4096, 64, need_weight=False)),
        ("encode bwd (scatter)", decode_kernels.SCATTER_ROWS, encode_bwd(4096, 2304, 65536, 64)),
        ("encode bwd fp32", decode_kernels.SCATTER_ROWS, encode_bwd(4096, 2304, 65536, 64, gdtype=f32)),
        ("encoder table fp32->bf16", encode_kernels.TRANSPOSE_CAST, table(2304, 65536)),
        ("top-k filter bf16", one_config, collect(4096, 65536, 64, bf16)),
        ("top-k filter fp32", one_config, collect(4096, 65536, 64, f32)),
    ]
    for name, tuner, launch in items:
        for config in tuner.candidates[:1] if quick else tuner.candidates:
            yield name, tuner, config, launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first config of each kernel only")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    kernels = [decode_kernels._gather_tiles_kernel, decode_kernels._gather_slots_kernel,
               decode_kernels._gather_dot_kernel, decode_kernels._scatter_rows_kernel,
               encode_kernels._transpose_cast_kernel, select_kernels._collect_candidates_kernel]
    recorders = {}
    for kernel in kernels:
        recorders[kernel] = kernel.run = Recorder(kernel)
    rows, failures = [], 0
    for name, tuner, config, launch in scenarios(args.quick):
        for recorder in recorders.values():
            recorder.calls.clear()
        with force_config(tuner.name, config):
            launch()
        for kernel, recorder in recorders.items():
            for call_args, call_kwargs in recorder.calls:
                launched = {key: value for key, value in call_kwargs.items() if key.isupper() or key.startswith("num_")}
                row = {"scenario": name, "kernel": kernel.fn.__name__, "config": launched}
                try:
                    row.update(compile_call(kernel, call_args, call_kwargs))
                except Exception as error:  # noqa: BLE001 (report every failure, keep going)
                    failures += 1
                    row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                rows.append(row)
                shown = row.get("error") or (
                    f"regs {row['registers']:>3}  spill {row['spill_stores']:>4}/{row['spill_loads']:<4} "
                    f"smem {row['shared_bytes']:>6}  {row['compile_s']:>5.2f}s"
                )
                print(f"{name:<24} {row['kernel']:<20} {str(launched):<112} {shown}", flush=True)
    write_json(Path(args.out) / "kernels-compile-sm90.json", {"target": "sm_90", "triton": triton.__version__, "rows": rows})
    print(f"{len(rows)} compiles, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
