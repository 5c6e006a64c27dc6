"""Triton BatchTopK selection: an exact global radix select over the whole batch.

torch.topk with k = k*N over N*d_sae entries (262,144 of 268M for N=4096, d_sae=65536)
sorts far more than it needs, and the follow-up argsort restores flat order. Here:
1. one histogram pass per 8-bit digit of the order-preserving keys (2 for bf16/fp16, 4
   for fp32), every program a block of the flattened tensor, block histograms merged with
   256 atomic adds each; between passes a few torch ops on the GPU pick the digit holding
   the n-th largest key (no host synchronisation);
2. a counting pass (per block: keys above the threshold, keys equal to it) and an
   exclusive prefix sum over blocks;
3. a writing pass: each block writes its keys above the threshold and its share of the
   first `remaining` ties, at offsets from the prefix sums, so the output comes out in
   ascending flat order with ties going to the lowest indices.
Every pass is one streaming read of the tensor with the whole GPU busy. The histogram
atomics make the count exact whatever the order they land in.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workbench.kernels import _interpreter
from workbench.kernels.encode.triton import _order_keys
from workbench.kernels.tuning import Tuner, forced_config, launch_args

_interpreter.install()


@triton.jit
def _digit_histogram_kernel(
    values_ptr, numel, prefix_ptr, hist_ptr,
    SHIFT: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    values = tl.load(values_ptr + offs, mask=ok, other=0.0)
    keys = _order_keys(values, ok, ok, KEY_BITS, False, False)
    match = ok
    if SHIFT + 8 < KEY_BITS:
        match = ok & ((keys >> (SHIFT + 8)) == tl.load(prefix_ptr))
    digits = ((keys >> SHIFT) & 255).to(tl.int32)
    tl.atomic_add(hist_ptr + tl.arange(0, 256), tl.histogram(digits, 256, mask=match))


@triton.jit
def _count_kernel(values_ptr, numel, threshold_ptr, counts_ptr, KEY_BITS: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    keys = _order_keys(tl.load(values_ptr + offs, mask=ok, other=0.0), ok, ok, KEY_BITS, False, False)
    threshold = tl.load(threshold_ptr)
    tl.store(counts_ptr + 2 * block, tl.sum((ok & (keys > threshold)).to(tl.int32), 0))
    tl.store(counts_ptr + 2 * block + 1, tl.sum((ok & (keys == threshold)).to(tl.int32), 0))


@triton.jit
def _write_kernel(
    values_ptr, numel, threshold_ptr, remaining_ptr, offsets_ptr, out_ptr,
    KEY_BITS: tl.constexpr, BLOCK: tl.constexpr,
):
    block = tl.program_id(0)
    offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    keys = _order_keys(tl.load(values_ptr + offs, mask=ok, other=0.0), ok, ok, KEY_BITS, False, False)
    threshold = tl.load(threshold_ptr)
    remaining = tl.load(remaining_ptr)
    above_before = tl.load(offsets_ptr + 2 * block)  # keys above the threshold in earlier blocks
    ties_before = tl.load(offsets_ptr + 2 * block + 1)  # keys equal to it in earlier blocks
    above = ok & (keys > threshold)
    tie = ok & (keys == threshold)
    tie_rank = ties_before + tl.cumsum(tie.to(tl.int64), 0) - 1
    take = above | (tie & (tie_rank < remaining))
    slot = above_before + tl.minimum(ties_before, remaining) + tl.cumsum(take.to(tl.int64), 0) - 1
    tl.store(out_ptr + slot, offs, mask=take)


BATCH_TOPK = Tuner("batch_topk", [
    dict(BLOCK=4096, num_warps=8),
    dict(BLOCK=8192, num_warps=16),
    dict(BLOCK=2048, num_warps=4),
])


def batch_topk_indices(values: torch.Tensor, n: int, config: dict | None = None) -> torch.Tensor:
    """Triton twin of reference.batch_topk_indices: [n] int64 ascending flat indices."""
    flat = values.reshape(-1)
    numel = flat.numel()
    device = values.device
    out = torch.empty(n, dtype=torch.long, device=device)
    if n == 0:
        return out
    key_bits = 32 if flat.dtype == torch.float32 else 16
    # Every pass is a plain streaming read, for which the block size matters little: no
    # timing of candidates (it would need the whole pipeline per candidate); tests and the
    # compile check cover every candidate through `config`.
    meta, options = launch_args(config or forced_config(BATCH_TOPK.name) or BATCH_TOPK.candidates[0])
    block = meta["BLOCK"]
    n_blocks = triton.cdiv(numel, block)
    bins = torch.arange(256, device=device, dtype=torch.int64)
    prefix = torch.zeros(1, dtype=torch.int64, device=device)
    remaining = torch.full((1,), n, dtype=torch.int64, device=device)
    for shift in range(key_bits - 8, -1, -8):
        hist = torch.zeros(256, dtype=torch.int32, device=device)
        _digit_histogram_kernel[(n_blocks,)](flat, numel, prefix, hist, SHIFT=shift, KEY_BITS=key_bits, **meta, **options)
        hist = hist.long()
        at_or_above = hist.flip(0).cumsum(0).flip(0)
        chosen = torch.where(at_or_above >= remaining, bins, -1).max()
        remaining = remaining - (hist * (bins > chosen)).sum()
        prefix = prefix * 256 + chosen
    counts = torch.empty(n_blocks, 2, dtype=torch.int32, device=device)
    _count_kernel[(n_blocks,)](flat, numel, prefix, counts, KEY_BITS=key_bits, **meta, **options)
    offsets = counts.long().cumsum(0) - counts.long()  # exclusive prefix sums over blocks
    _write_kernel[(n_blocks,)](flat, numel, prefix, remaining, offsets, out, KEY_BITS=key_bits, **meta, **options)
    return out
