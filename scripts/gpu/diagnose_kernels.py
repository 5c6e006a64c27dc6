"""GPU diagnostic of the decode backward's fused d-acts dots (run on the H200; prints a report).

For `scatter_rows` with a dot table at the GPU test's shape (N 4096, k 64, d_sae 131072,
d 4096, bf16, unique latents): which pairs differ from the reference, whether the same
ones differ on every run (a logic error) or not (a race), how many pairs their latent
group holds (the kernel's fast path takes groups of <= BLOCK_P pairs), and whether other
launch configs differ too. (Where the one-token decode's host time goes: `bench/one_token_latency.py --pieces`.)

    python scripts/gpu/diagnose_kernels.py
"""

from __future__ import annotations

import torch

from workbench.kernels.decode import reference
from workbench.kernels.decode import triton as kernels
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


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), flush=True)
    dots_report()
