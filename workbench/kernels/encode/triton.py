"""Triton path of the TopK encoder: cuBLAS GEMM, a radix-select top-k kernel, sparse backward.

Forward. pre = x @ W_enc + b_enc runs in cuBLAS (nothing beats it for a dense GEMM), in
x's dtype with fp32 accumulation. Selection is `_topk_rows_kernel`: one program per row,
an exact radix select on order-preserving integer keys of the values (or of |values|):
 - the key of a float is its bit pattern with the sign handled so that integer order is
   float order (16-bit keys for bf16/fp16, 32-bit for fp32; masked-out latents get key 0);
 - one pass per 8-bit digit, most significant first, histograms (`tl.histogram`) the digit
   of the keys that still match the prefix chosen so far and picks the digit holding the
   k-th largest, so after 2 passes (bf16) or 4 (fp32) the k-th largest key T is known;
 - a last pass writes every key > T and the first (lowest index) keys == T until k slots
   are filled, positions from a running prefix sum, so slots come out in ascending latent
   order. That is 3 (bf16) or 5 (fp32) streaming reads of the row; `torch.topk` sorts.
For few rows (one program per row would leave the GPU idle) it falls back to torch.topk
through the reference selection, which selects the same set up to ties.

Backward (see reference.py for the formulas): dx is a gather-sum over the rows of W_enc^T
(copied to a contiguous [d_sae, d_in], in the slot gradients' dtype when that is bf16/fp16,
when W_enc is a plain [d_in, d_sae] tensor: gathering strided columns would read a 32-byte
sector per element); dW_enc and db_enc come from one latent-sorted scatter pass that writes
latent rows straight into a contiguous [d_in, d_sae] gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workbench.kernels import _interpreter
from workbench.kernels.decode.triton import gather_sum, scatter_rows
from workbench.kernels.encode import reference
from workbench.kernels.tuning import Tuner, bucket, launch_args

_interpreter.install()

# Below this many rows the one-program-per-row select leaves most SMs idle: use torch.topk.
MIN_ROWS_FOR_KERNEL = 128


@triton.jit
def _order_keys(values, ok, dead, KEY_BITS: tl.constexpr, ABSOLUTE: tl.constexpr, HAS_MASK: tl.constexpr):
    """Unsigned, order-preserving integer keys of float values (0 for invalid or masked-out)."""
    if KEY_BITS == 16:
        bits = values.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended
        if ABSOLUTE:
            keys = bits & 0x7FFF
        else:
            keys = (bits ^ ((bits >> 15) & 0x7FFF)) + 32768
    else:
        bits = values.to(tl.int32, bitcast=True)
        if ABSOLUTE:
            keys = (bits & 0x7FFFFFFF).to(tl.int64)
        else:
            keys = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648
    keep = ok
    if HAS_MASK:
        keep = keep & dead
    return tl.where(keep, keys, 0)


@triton.jit
def _topk_rows_kernel(
    pre_ptr, mask_ptr, vals_ptr, idx_ptr,
    M, K,
    stride_pn, stride_pm, stride_vn, stride_vk, stride_in, stride_ik,
    KEY_BITS: tl.constexpr, ABSOLUTE: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
    STAGES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = pre_ptr + row * stride_pn
    bins = tl.arange(0, 256)
    remaining = K  # how many of the slots still to fill lie at or below the prefix so far
    prefix = row * 0  # the key digits chosen so far (int64)
    for digit_pass in tl.static_range(KEY_BITS // 8):
        shift = KEY_BITS - 8 * (digit_pass + 1)
        hist = tl.zeros((256,), dtype=tl.int32)
        for m0 in tl.range(0, M, BLOCK, num_stages=STAGES):  # prefetch the next blocks
            offs = m0 + tl.arange(0, BLOCK)
            ok = offs < M
            values = tl.load(row_ptr + offs * stride_pm, mask=ok, other=0.0)
            dead = ok
            if HAS_MASK:
                dead = tl.load(mask_ptr + offs, mask=ok, other=0) != 0
            keys = _order_keys(values, ok, dead, KEY_BITS, ABSOLUTE, HAS_MASK)
            match = ok
            if digit_pass > 0:
                match = ok & ((keys >> (shift + 8)) == prefix)
            digits = ((keys >> shift) & 255).to(tl.int32)
            hist += tl.histogram(digits, 256, mask=match)
        at_or_above = tl.cumsum(hist, 0, reverse=True)  # matching keys with this digit or a larger one
        chosen = tl.max(tl.where(at_or_above >= remaining, bins, -1), 0)
        remaining -= tl.sum(tl.where(bins > chosen, hist, 0), 0)
        prefix = prefix * 256 + chosen.to(tl.int64)
    # prefix is now the k-th largest key; `remaining` of the slots go to keys equal to it.
    taken = row.to(tl.int32) * 0
    ties_seen = row.to(tl.int32) * 0
    for m0 in tl.range(0, M, BLOCK, num_stages=STAGES):
        offs = m0 + tl.arange(0, BLOCK)
        ok = offs < M
        values = tl.load(row_ptr + offs * stride_pm, mask=ok, other=0.0)
        dead = ok
        if HAS_MASK:
            dead = tl.load(mask_ptr + offs, mask=ok, other=0) != 0
        keys = _order_keys(values, ok, dead, KEY_BITS, ABSOLUTE, HAS_MASK)
        above = ok & (keys > prefix)
        tie = ok & (keys == prefix)
        tie_rank = ties_seen + tl.cumsum(tie.to(tl.int32), 0) - 1
        take = above | (tie & (tie_rank < remaining))
        slot = taken + tl.cumsum(take.to(tl.int32), 0) - 1
        out = values
        if not ABSOLUTE:
            out = tl.where(out > 0, out, 0.0)  # the ReLU
        if HAS_MASK:
            out = tl.where(dead, out, 0.0)  # a live latent filling a slot no dead one could
        tl.store(vals_ptr + row * stride_vn + slot * stride_vk, out.to(vals_ptr.dtype.element_ty), mask=take)
        tl.store(idx_ptr + row * stride_in + slot * stride_ik, offs.to(tl.int64), mask=take)
        taken += tl.sum(take.to(tl.int32), 0)
        ties_seen += tl.sum(tie.to(tl.int32), 0)


# One program per row streams the row BLOCK elements at a time; its passes are sequential,
# so bytes in flight per SM come from large blocks or from prefetching STAGES blocks ahead.
TOPK_ROWS = Tuner("topk_rows", [
    dict(BLOCK=2048, STAGES=3, num_warps=4),
    dict(BLOCK=4096, STAGES=3, num_warps=8),
    dict(BLOCK=8192, STAGES=1, num_warps=16),
    dict(BLOCK=4096, STAGES=1, num_warps=8),
    dict(BLOCK=1024, STAGES=4, num_warps=4),
])


def select_topk(
    pre: torch.Tensor, k: int, absolute: bool, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of reference.select_topk: (vals [N, k] in pre's dtype, idx [N, k] int64 ascending)."""
    n_rows, width = pre.shape
    if k == 0 or n_rows == 0:
        return reference.select_topk(pre, k, absolute, mask)
    if pre.is_cuda and n_rows < MIN_ROWS_FOR_KERNEL:
        return reference.select_topk(pre, k, absolute, mask)
    vals = torch.empty(n_rows, k, dtype=pre.dtype, device=pre.device)
    idx = torch.empty(n_rows, k, dtype=torch.long, device=pre.device)
    key_bits = 32 if pre.dtype == torch.float32 else 16
    mask_arg = mask if mask is not None else pre

    def launch(config: dict):
        meta, options = launch_args(config)
        _topk_rows_kernel[(n_rows,)](
            pre, mask_arg, vals, idx, width, k,
            pre.stride(0), pre.stride(1), vals.stride(0), vals.stride(1), idx.stride(0), idx.stride(1),
            KEY_BITS=key_bits, ABSOLUTE=bool(absolute), HAS_MASK=mask is not None, **meta, **options,
        )

    key = (bucket(n_rows), bucket(width), pre.dtype)
    launch(TOPK_ROWS.pick(key, pre.device, launch))
    return vals, idx


def encode_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead_mask: torch.Tensor | None,
    k_aux: int,
    absolute: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton twin of reference.encode_forward: (vals, idx, aux_vals, aux_idx)."""
    pre = torch.addmm(b_enc.to(x.dtype), x, W_enc.to(x.dtype))  # [N, d_sae], fp32 accumulation
    vals, idx = select_topk(pre, k, absolute)
    if k_aux > 0 and dead_mask is not None:
        aux_vals, aux_idx = select_topk(pre, k_aux, absolute, mask=dead_mask)
    else:
        aux_vals, aux_idx = reference.select_topk(pre, 0, absolute)
    return vals, idx, aux_vals, aux_idx


def encode_backward(
    g: torch.Tensor,
    latents: torch.Tensor,
    x: torch.Tensor,
    W_enc: torch.Tensor,
    need_x: bool = True,
    need_weight: bool = True,
    need_bias: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Triton twin of reference.encode_backward: (dx, dW_enc [d_in, d_sae], db_enc [d_sae] fp32)."""
    d_in, d_sae = W_enc.shape
    dx = d_weight = d_bias = None
    if need_x:
        table = W_enc.t()  # [d_sae, d_in]: row l is latent l's encoder direction
        if table.stride(1) != 1 and 8 * g.numel() > d_sae:
            # One transposed copy beats a strided gather (a 32-byte sector per element). With
            # half-precision slot gradients the copy is also cast to their dtype, as autocast
            # casts the weight of a dense bf16 backward.
            dtype = g.dtype if g.dtype in (torch.bfloat16, torch.float16) else W_enc.dtype
            table = torch.empty(d_sae, d_in, dtype=dtype, device=W_enc.device).copy_(table)
        dx = gather_sum(g, latents, table, out_dtype=x.dtype)
    if need_weight:
        # Always a contiguous [d_in, d_sae] (the SAELens layout of W_enc, so autograd
        # accumulates it without a copy); the kernel writes latent rows through its
        # transposed view. (Output strides may not follow the input's: under torch.compile
        # the traced and the real W_enc can differ in layout.)
        d_weight = torch.empty(d_in, d_sae, dtype=W_enc.dtype, device=W_enc.device)
        _, _, d_bias = scatter_rows(
            g, latents, x, d_sae, W_enc.dtype, coef_sums=need_bias, skip_zero=True, out=d_weight.t()
        )
    elif need_bias:
        d_bias = torch.zeros(d_sae, dtype=torch.float32, device=x.device)
        d_bias.index_add_(0, latents.reshape(-1).long(), g.reshape(-1).float())
    return dx, d_weight, d_bias
