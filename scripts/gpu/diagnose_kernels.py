"""GPU diagnostics for two open kernel questions (run on the H200; prints a report).

1. The fused d-acts dots of the decode backward (`scatter_rows` with a dot table): at the
   GPU test's shape (N 4096, k 64, d_sae 131072, d 4096, bf16, unique latents), which
   pairs differ from the reference, whether the same ones differ on every run (a logic
   error) or not (a race), how many pairs their latent group holds (the kernel's fast path
   takes groups of <= BLOCK_P pairs), and whether other launch configs differ too.
2. Where the one-token decode's host time goes: host-loop microseconds per call of each
   piece of the no-grad path (allocation, signature, dispatch, the launcher itself).

    python scripts/gpu/diagnose_kernels.py                  # both
    python scripts/gpu/diagnose_kernels.py --latency-only   # only 2.
"""

from __future__ import annotations

import sys
import time

import torch

from workbench.kernels import sparse_decode, use
from workbench.kernels.decode import reference
from workbench.kernels.decode import triton as kernels
from workbench.kernels.dispatch import _resolve
from workbench.kernels.tuning import force_config

CUDA = torch.device("cuda")


def inputs():
    gen = torch.Generator(device=CUDA).manual_seed(0)
    n, k, m, d = 4096, 64, 131072, 4096
    acts = torch.rand(n, k, device=CUDA, generator=gen).to(torch.bfloat16)
    idx = torch.rand(n, m, device=CUDA, generator=gen).topk(k, dim=1).indices
    W = torch.randn(m, d, device=CUDA, generator=gen).to(torch.bfloat16) / 64
    torch.randn(d, device=CUDA, generator=gen)  # the test's bias draw, keeps grad_y identical
    grad_y = torch.randn(n, d, device=CUDA, generator=gen).to(torch.bfloat16)
    return acts, idx, W, grad_y


def dots_report() -> None:
    acts, idx, W, grad_y = inputs()
    want = reference.decode_backward(grad_y, acts, idx, W, True, False)[0].float()
    scale = want.abs().max()
    counts = torch.bincount(idx.reshape(-1), minlength=W.shape[0])
    configs = [None, dict(BLOCK_L=16, BLOCK_P=128, BLOCK_D=64, num_warps=4, num_stages=3),
               dict(BLOCK_L=16, BLOCK_P=64, BLOCK_D=128, num_warps=4, num_stages=1),
               dict(BLOCK_L=16, BLOCK_P=64, BLOCK_D=128, num_warps=8, num_stages=3)]
    for config in configs:
        previous = None
        for run in range(4):
            if config is None:
                got = kernels.scatter_rows(acts, idx, grad_y, W.shape[0], W.dtype, dot_table=W)[1]
            else:
                with force_config("scatter_rows", config):
                    got = kernels.scatter_rows(acts, idx, grad_y, W.shape[0], W.dtype, dot_table=W)[1]
            err = (got - want).abs()
            bad = (err > 2e-3 * scale).nonzero()
            same = previous is not None and torch.equal(got, previous)
            previous = got.clone()
            groups = []
            for n, j in bad[:5].tolist():
                latent = int(idx[n, j])
                group = latent // 16
                size = int(counts[group * 16:(group + 1) * 16].sum())
                groups.append(f"pair ({n},{j}) latent {latent} got {got[n, j]:.4f} want {want[n, j]:.4f} "
                              f"group pairs {size}")
            print(f"config {config or 'default'} run {run}: {len(bad)} bad of {err.numel()}, max err "
                  f"{float(err.max()):.4g}, identical to previous run: {same}", flush=True)
            for line in groups:
                print("    " + line, flush=True)
    group_sizes = counts.view(-1, 16).sum(1)
    print(f"latent groups of 16: max pairs {int(group_sizes.max())}, groups over 64 pairs "
          f"{int((group_sizes > 64).sum())}, over 128 {int((group_sizes > 128).sum())}", flush=True)


def host_loop_us(fn, calls: int = 5000) -> float:
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def latency_report() -> None:
    gen = torch.Generator(device=CUDA).manual_seed(5)
    W = torch.randn(131072, 4096, device=CUDA, generator=gen).to(torch.bfloat16)
    acts = torch.rand(1, 64, device=CUDA, generator=gen).to(torch.bfloat16)
    idx = torch.randperm(131072, device=CUDA, generator=gen)[:64].view(1, 64)
    with torch.no_grad(), use("triton"):
        for _ in range(3):
            sparse_decode(acts, idx, W)
        sig = kernels.lean_signature(acts, idx, W, None)
        plan = kernels._LEAN_PLANS.get(sig)
        print(f"plan stored: {plan is not None}", flush=True)
        out = torch.empty(1, 4096, dtype=torch.bfloat16, device=CUDA)
        pieces = {
            "sparse_decode (public, whole call)": lambda: sparse_decode(acts, idx, W),
            "lean_decode (signature, lookup, empty, launch)": lambda: kernels.lean_decode(acts, idx, W, None),
            "torch.empty [1, 4096] bf16 cuda": lambda: torch.empty((1, 4096), dtype=torch.bfloat16, device=CUDA),
            "torch.empty with acts.device": lambda: torch.empty((1, 4096), dtype=acts.dtype, device=acts.device),
            "lean_signature": lambda: kernels.lean_signature(acts, idx, W, None),
            "_resolve": lambda: _resolve("sparse_decode", "cuda", torch.bfloat16),
            "no_grad test + is_compiling": lambda: not (torch.is_grad_enabled() and acts.requires_grad)
            and not torch.compiler.is_compiling(),
            "getCurrentRawStream": lambda: torch._C._cuda_getCurrentRawStream(0),
            "torch.add (one aten op, for scale)": lambda: torch.add(acts, 1),
        }
        if plan is not None:
            launch, function, coop, pdl, metadata, gx, gy, int_args, _, _ = plan
            stream = torch._C._cuda_getCurrentRawStream(0)
            ptrs = (acts.data_ptr(), idx.data_ptr(), W.data_ptr(), out.data_ptr(), out.data_ptr())
            pieces["C launcher, pointers as ints (plan's call)"] = lambda: launch(
                gx, gy, 1, stream, function, coop, pdl, None, None, metadata, None, None, None, *ptrs, *int_args)
            pieces["C launcher, tensors (driver pointer checks)"] = lambda: launch(
                gx, gy, 1, stream, function, coop, pdl, None, None, metadata, None, None, None,
                acts, idx, W, out, out, *int_args)
            entry = kernels._SLOTS_LAUNCH.verified_entry(next(iter(kernels._SLOTS_LAUNCH._verified)))
            if entry is not None:
                compiled, tail = entry
                pieces["compiled.run (Python wrapper + C launcher)"] = lambda: compiled.run(
                    gx, gy, 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                    acts, idx, W, out, out, *int_args)
        pieces["acts.new_empty [1, 4096]"] = lambda: acts.new_empty((1, 4096))
        pieces["4 x data_ptr()"] = lambda: (acts.data_ptr(), idx.data_ptr(), W.data_ptr(), out.data_ptr())
        for name, fn in pieces.items():
            print(f"  {name:<46} {host_loop_us(fn):7.2f} us/call", flush=True)


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), flush=True)
    if "--latency-only" not in sys.argv:
        dots_report()
    latency_report()
