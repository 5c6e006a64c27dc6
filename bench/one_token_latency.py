"""One-token decode latency in a fresh process (GPU): what an interactive session pays per call.

Host-loop microseconds per call (back-to-back calls, one synchronisation at the end) of
the public `sparse_decode` at the goal shape (d_sae 131072, d_in 4096, k 64, bf16), of its
stored plan alone (`lean_decode`), and of one `torch.add` on a [1, 64] tensor as a measure
of the host's speed. `--pieces` adds where the time goes: the allocation, the signature,
dispatch, and the launcher called three ways (Triton's Python wrapper, its C launcher
with tensors, and with pointers as ints as the plan calls it).

bench/kernels.py runs this in a subprocess next to its own in-process figure: on the H200
host, its process, after minutes of large allocations and hundreds of compiled kernels,
ran every small op about 1.5x slower (torch.add 11.5 us there, 7.9 us in a fresh process
on the same machine), for a reason not found.

    python bench/one_token_latency.py            # one JSON object on stdout
    python bench/one_token_latency.py --pieces   # and a table of the pieces
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.kernels import sparse_decode, use  # noqa: E402
from workbench.kernels.decode import triton as kernels  # noqa: E402
from workbench.kernels.dispatch import _resolve  # noqa: E402

CUDA = torch.device("cuda")


def host_loop_us(fn, calls: int = 5000) -> float:
    """Microseconds per call of `calls` back-to-back calls after 200 warm-up calls."""
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def pieces(acts, idx, W) -> dict:
    """Host-loop microseconds of each piece of the no-grad one-token path."""
    out = torch.empty(1, 4096, dtype=torch.bfloat16, device=CUDA)
    timed = {
        "torch.empty [1, 4096] bf16 cuda": lambda: torch.empty((1, 4096), dtype=torch.bfloat16, device=CUDA),
        "acts.new_empty [1, 4096] (the plan's allocation)": lambda: acts.new_empty((1, 4096)),
        "lean_signature": lambda: kernels.lean_signature(acts, idx, W, None),
        "_resolve (backend choice)": lambda: _resolve("sparse_decode", "cuda", torch.bfloat16),
        "no_grad test + is_compiling": lambda: not (torch.is_grad_enabled() and acts.requires_grad)
        and not torch.compiler.is_compiling(),
        "getCurrentRawStream": lambda: torch._C._cuda_getCurrentRawStream(0),
        "4 x data_ptr()": lambda: (acts.data_ptr(), idx.data_ptr(), W.data_ptr(), out.data_ptr()),
    }
    plan = kernels._LEAN_PLANS.get(kernels.lean_signature(acts, idx, W, None))
    if plan is not None:
        launch, function, coop, pdl, metadata, gx, gy, int_args, _, _ = plan
        stream = torch._C._cuda_getCurrentRawStream(0)
        ptrs = (acts.data_ptr(), idx.data_ptr(), W.data_ptr(), out.data_ptr(), out.data_ptr())
        timed["C launcher, pointers as ints (the plan's call)"] = lambda: launch(
            gx, gy, 1, stream, function, coop, pdl, None, None, metadata, None, None, None, *ptrs, *int_args)
        timed["C launcher, tensors (a driver pointer query each)"] = lambda: launch(
            gx, gy, 1, stream, function, coop, pdl, None, None, metadata, None, None, None,
            acts, idx, W, out, out, *int_args)
        entry = kernels._SLOTS_LAUNCH.verified_entry(next(iter(kernels._SLOTS_LAUNCH._verified)))
        if entry is not None:
            compiled = entry[0]
            timed["compiled.run (Triton's Python wrapper + C launcher)"] = lambda: compiled.run(
                gx, gy, 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                acts, idx, W, out, out, *int_args)
    return {name: host_loop_us(fn) for name, fn in timed.items()}


def main() -> None:
    gen = torch.Generator(device=CUDA).manual_seed(5)
    W = (torch.randn(131072, 4096, device=CUDA, generator=gen) / 64).to(torch.bfloat16)
    acts = torch.rand(1, 64, device=CUDA, generator=gen).to(torch.bfloat16)
    idx = torch.randperm(131072, device=CUDA, generator=gen)[:64].view(1, 64)
    with torch.no_grad(), use("triton"):
        for _ in range(3):  # compile, check the direct launch, store the plan
            sparse_decode(acts, idx, W)
        result = {
            "device": torch.cuda.get_device_name(),
            "plan_stored": kernels.lean_signature(acts, idx, W, None) in kernels._LEAN_PLANS,
            "public_sparse_decode_us": host_loop_us(lambda: sparse_decode(acts, idx, W)),
            "lean_decode_us": host_loop_us(lambda: kernels.lean_decode(acts, idx, W, None)),
            "torch_add_us": host_loop_us(lambda: torch.add(acts, 1)),
        }
        if "--pieces" in sys.argv:
            result["pieces_us"] = pieces(acts, idx, W)
            for name, us in result["pieces_us"].items():
                print(f"  {name:<52} {us:7.2f} us/call", file=sys.stderr, flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
