"""Triton kernels for sparse decode and the two sparse-backward primitives it shares with the encoder.

Kernels, each behind a launcher with the shape contract of its reference twin in
`reference.py` (gather_sum, gather_dot, scatter_rows):

- `_gather_tiles_kernel` (decode forward, encoder dx): out[n] = sum_j c[n, j] * T[idx[n, j]].
  Work items are (tile of BLOCK_N rows, block of BLOCK_D columns), numbered column block
  first, and a persistent grid of `per_sm` programs per multiprocessor walks them in that
  order. So at any moment the whole GPU works on one or two column blocks, and the row
  segments of one column block (113k named rows x 128 B = 14 MB at d_sae 131072, N 4096)
  fit in L2: a row named by several tokens comes from HBM once and from L2 after. The
  slots of an item are read UNROLL at a time (STAGES > 1 prefetches the next group), fp32
  accumulation in registers; zero coefficients skip their load. The cap on resident
  programs is what keeps the L2 footprint small; the tuner times several footprints.
  PACKED: the table is `packed.pack_rows`'s column-block-major copy (large no-grad decodes),
  so one column block's rows are one contiguous range instead of segments spread over the
  whole table (on the H200 14-24% faster at the goal shapes; see packed.py).
- `_gather_slots_kernel` (one to FEW_ROWS rows, i.e. interactive inspection): slots are a
  tile dimension, so a program issues all of a row's gathers for its columns at once (one
  memory round trip); launched through `launch.DirectLaunch` to keep dispatch short.
- `_gather_dot_kernel` (decode d_acts when W_dec needs no gradient): out[n, j] = <r[n], T[idx[n, j]]>.
- `_scatter_rows_kernel` (decode dW_dec, encoder dW_enc / db_enc): out[l] = sum over pairs with
  idx == l of c * r[n]. The (row, slot) pairs are sorted by latent (torch.sort) so that each
  program owns BLOCK_L consecutive latents and the contiguous run of pairs naming them, over
  all columns: it builds each [BLOCK_L, BLOCK_D] tile of out with a one-hot matrix product on
  the tensor cores (S^T @ R, S holding each pair's coefficient in its latent's column),
  writes every row once (zeros for latents nobody named), and never uses atomics. When the
  group's pairs fit one block (the usual case) their metadata is loaded once and the column
  loop's loads are independent, so they pipeline; longer segments take a general path. Fused options:
  the dot products <r[n], T[l]> of every pair (decode d_acts, with T = W_dec, read once per
  latent instead of once per pair) and the per-latent coefficient sums (encoder db_enc).
  Products run on bf16/fp16 operands when codes and rows are half precision (fp32 weights
  are rounded to that dtype for the fused dot, as autocast would round them), and on fp32
  operands in exact fp32 (FMA, "ieee") otherwise; accumulation is always fp32.

Calls with many slots per row (AuxK's k_aux = d_in / 2) go to `dense.py` instead when its
cost model says so: GEMMs over the latents actually named.

Out-of-range indices are skipped (they contribute nothing and are never dereferenced).
Every kernel overwrites its outputs completely, so the tuner may launch it repeatedly.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from workbench.kernels import _interpreter
from workbench.kernels.decode import dense, packed
from workbench.kernels.launch import DirectLaunch, c_launcher
from workbench.kernels.tuning import Tuner, bucket, interpreting, launch_args, tuning_forced

_interpreter.install()
log = logging.getLogger("workbench.kernels")

FEW_ROWS = 4
"""Up to this many rows the decode runs `_gather_slots_kernel` (latency), above it the tiles."""


@triton.jit
def _gather_tiles_kernel(
    coef_ptr, idx_ptr, table_ptr, bias_ptr, out_ptr,
    N, K, M, D, n_row_tiles, n_items,
    stride_cn, stride_ck, stride_in, stride_ik, stride_tm, stride_td, stride_b, stride_on, stride_od,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr,
    STAGES: tl.constexpr = 1, KEEP_TABLE: tl.constexpr = False, PACKED: tl.constexpr = False,
):
    # Persistent: items item, item + programs, ... in column-block-major order.
    for item in tl.range(tl.program_id(0), n_items, tl.num_programs(0)):
        col_block = item // n_row_tiles
        row_tile = item - col_block * n_row_tiles
        rows = row_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = col_block * BLOCK_D + tl.arange(0, BLOCK_D)
        row_ok = rows < N
        col_ok = cols < D
        rows64 = rows.to(tl.int64)
        if PACKED:
            # table: packed.pack_rows layout [cdiv(D, BLOCK_D), M, BLOCK_D], one column block contiguous
            col_part = col_block.to(tl.int64) * M * BLOCK_D + tl.arange(0, BLOCK_D)
            row_stride = BLOCK_D
        else:
            col_part = cols.to(tl.int64) * stride_td
            row_stride = stride_tm
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for j0 in tl.range(0, K, UNROLL, num_stages=STAGES):  # STAGES > 1: prefetch the next slots
            for u in tl.static_range(UNROLL):
                slot_ok = row_ok & (j0 + u < K)
                latent = tl.load(idx_ptr + rows64 * stride_in + (j0 + u) * stride_ik, mask=slot_ok, other=0).to(tl.int64)
                coef = tl.load(coef_ptr + rows64 * stride_cn + (j0 + u) * stride_ck, mask=slot_ok, other=0.0).to(tl.float32)
                live = slot_ok & (coef != 0.0) & (latent >= 0) & (latent < M)
                # KEEP_TABLE: rows stay in L2 ahead of the output lines, which are written
                # once and never read back (so they go first), for more reuse of named rows.
                w = tl.load(
                    table_ptr + latent[:, None] * row_stride + col_part[None, :],
                    mask=live[:, None] & col_ok[None, :], other=0.0,
                    eviction_policy="evict_last" if KEEP_TABLE else "",
                )
                acc += coef[:, None] * w.to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols * stride_b, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(
            out_ptr + rows64[:, None] * stride_on + cols[None, :] * stride_od,
            acc.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
            eviction_policy="evict_first" if KEEP_TABLE else "",
        )


_INT_ARGS = ["K", "M", "D", "stride_cn", "stride_ck", "stride_in", "stride_ik", "stride_tm", "stride_td",
             "stride_b", "stride_on", "stride_od"]
_POINTER_ARGS = ["coef_ptr", "idx_ptr", "table_ptr", "bias_ptr", "out_ptr"]


# No value specialisation at all (see launch.DirectLaunch): the compiled code depends only on
# dtypes and constexprs, so it can be launched directly per dtype key.
@triton.jit(do_not_specialize=_INT_ARGS, do_not_specialize_on_alignment=_POINTER_ARGS)
def _gather_slots_kernel(
    coef_ptr, idx_ptr, table_ptr, bias_ptr, out_ptr,
    K, M, D,
    stride_cn, stride_ck, stride_in, stride_ik, stride_tm, stride_td, stride_b, stride_on, stride_od,
    HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j0 in range(0, K, BLOCK_K):
        slots = j0 + tl.arange(0, BLOCK_K)
        slot_ok = slots < K
        latent = tl.load(idx_ptr + row * stride_in + slots * stride_ik, mask=slot_ok, other=0).to(tl.int64)
        coef = tl.load(coef_ptr + row * stride_cn + slots * stride_ck, mask=slot_ok, other=0.0).to(tl.float32)
        live = slot_ok & (coef != 0.0) & (latent >= 0) & (latent < M)
        w = tl.load(
            table_ptr + latent[:, None] * stride_tm + cols[None, :] * stride_td,
            mask=live[:, None] & col_ok[None, :], other=0.0,
        )
        acc += tl.sum(coef[:, None] * w.to(tl.float32), axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols * stride_b, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_on + cols * stride_od, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _gather_dot_kernel(
    rows_ptr, idx_ptr, table_ptr, out_ptr,
    K, M, D,
    stride_rn, stride_rd, stride_in, stride_ik, stride_tm, stride_td, stride_on, stride_ok,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slots = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    slot_ok = slots < K
    latent = tl.load(idx_ptr + row * stride_in + slots * stride_ik, mask=slot_ok, other=0).to(tl.int64)
    live = slot_ok & (latent >= 0) & (latent < M)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        r = tl.load(rows_ptr + row * stride_rn + cols * stride_rd, mask=col_ok, other=0.0).to(tl.float32)
        w = tl.load(
            table_ptr + latent[:, None] * stride_tm + cols[None, :] * stride_td,
            mask=live[:, None] & col_ok[None, :], other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w * r[None, :], axis=1)
    tl.store(out_ptr + row * stride_on + slots * stride_ok, acc, mask=slot_ok)


@triton.jit
def _pair_block(perm_ptr, keys_ptr, coef_ptr, positions, end, first, K, stride_cn, stride_ck,
                SKIP_ZERO: tl.constexpr):
    """One block of a latent group's sorted pairs: (pair_ok, pair id, latent - first, token row,
    coefficient in fp32, whether its row must be loaded)."""
    pair_ok = positions < end
    pair = tl.load(perm_ptr + positions, mask=pair_ok, other=0).to(tl.int64)
    local = tl.load(keys_ptr + positions, mask=pair_ok, other=-1).to(tl.int32) - first
    row = pair // K
    slot = pair - row * K
    coef = tl.load(coef_ptr + row * stride_cn + slot * stride_ck, mask=pair_ok, other=0.0).to(tl.float32)
    load_ok = pair_ok
    if SKIP_ZERO:
        load_ok = pair_ok & (coef != 0.0)
    return pair_ok, pair, local, row, coef, load_ok


@triton.jit
def _scatter_rows_kernel(
    perm_ptr, keys_ptr, group_start_ptr, coef_ptr, rows_ptr, out_ptr, table_ptr, dots_ptr, coef_sum_ptr,
    M, K, D,
    stride_cn, stride_ck, stride_rn, stride_rd, stride_om, stride_od, stride_tm, stride_td,
    FUSE_DOT: tl.constexpr, COEF_SUM: tl.constexpr, SKIP_ZERO: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per group of BLOCK_L consecutive latents, over all D columns.
    group = tl.program_id(0)
    first = group * BLOCK_L
    lanes = tl.arange(0, BLOCK_L)
    latents = first + lanes
    latent_ok = latents < M
    latents64 = latents.to(tl.int64)
    start = tl.load(group_start_ptr + group)
    end = tl.load(group_start_ptr + group + 1)
    coef_sum = tl.zeros((BLOCK_L,), dtype=tl.float32)
    if end - start <= BLOCK_P:
        # Fast path (the usual case): all the group's pairs fit one block, so their metadata
        # is loaded once and the column loop has independent iterations (pipelined).
        pair_ok, pair, local, row, coef, load_ok = _pair_block(
            perm_ptr, keys_ptr, coef_ptr, start + tl.arange(0, BLOCK_P), end, first, K, stride_cn, stride_ck,
            SKIP_ZERO)
        onehot_t = lanes[:, None] == local[None, :]  # [BLOCK_L, BLOCK_P]: pair p names latent first + l
        s_t = tl.where(onehot_t, coef[None, :], 0.0)
        if COEF_SUM:
            coef_sum = tl.sum(s_t, axis=1)
        products = tl.zeros((BLOCK_P, BLOCK_L), dtype=tl.float32)
        for c0 in range(0, D, BLOCK_D):
            cols = c0 + tl.arange(0, BLOCK_D)
            col_ok = cols < D
            r = tl.load(rows_ptr + row[:, None] * stride_rn + cols[None, :] * stride_rd,
                        mask=load_ok[:, None] & col_ok[None, :], other=0.0)
            if DOT_FP32:
                tile = tl.dot(s_t, r.to(tl.float32), input_precision="ieee")
            else:
                tile = tl.dot(s_t.to(r.dtype), r)
            tl.store(out_ptr + latents64[:, None] * stride_om + cols[None, :] * stride_od,
                     tile.to(out_ptr.dtype.element_ty), mask=latent_ok[:, None] & col_ok[None, :])
            if FUSE_DOT:
                table_t = tl.load(table_ptr + latents64[None, :] * stride_tm + cols[:, None] * stride_td,
                                  mask=latent_ok[None, :] & col_ok[:, None] & (end > start), other=0.0)
                if DOT_FP32:
                    products = tl.dot(r.to(tl.float32), table_t.to(tl.float32), products, input_precision="ieee")
                else:
                    products = tl.dot(r, table_t.to(r.dtype), products)
        if FUSE_DOT:
            dots = tl.sum(tl.where(lanes[None, :] == local[:, None], products, 0.0), axis=1)
            tl.store(dots_ptr + pair, dots, mask=pair_ok)
    else:
        # General path (a latent segment longer than a block, e.g. skewed data): columns
        # outer, pair blocks inner; each pair's dot is summed across column blocks in place
        # (this program alone owns those pairs).
        for c0 in range(0, D, BLOCK_D):
            cols = c0 + tl.arange(0, BLOCK_D)
            col_ok = cols < D
            acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
            if FUSE_DOT:
                table_t = tl.load(table_ptr + latents64[None, :] * stride_tm + cols[:, None] * stride_td,
                                  mask=latent_ok[None, :] & col_ok[:, None], other=0.0)
            for p0 in range(start, end, BLOCK_P):
                pair_ok, pair, local, row, coef, load_ok = _pair_block(
                    perm_ptr, keys_ptr, coef_ptr, p0 + tl.arange(0, BLOCK_P), end, first, K, stride_cn, stride_ck,
                    SKIP_ZERO)
                r = tl.load(rows_ptr + row[:, None] * stride_rn + cols[None, :] * stride_rd,
                            mask=load_ok[:, None] & col_ok[None, :], other=0.0)
                onehot_t = lanes[:, None] == local[None, :]
                s_t = tl.where(onehot_t, coef[None, :], 0.0)
                if DOT_FP32:
                    acc = tl.dot(s_t, r.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(s_t.to(r.dtype), r, acc)
                if COEF_SUM:
                    if c0 == 0:
                        coef_sum += tl.sum(s_t, axis=1)
                if FUSE_DOT:
                    if DOT_FP32:
                        part = tl.dot(r.to(tl.float32), table_t.to(tl.float32), input_precision="ieee")
                    else:
                        part = tl.dot(r, table_t.to(r.dtype))
                    dots = tl.sum(tl.where(lanes[None, :] == local[:, None], part, 0.0), axis=1)
                    previous = tl.load(dots_ptr + pair, mask=pair_ok & (c0 > 0), other=0.0)
                    tl.store(dots_ptr + pair, previous + dots, mask=pair_ok)
            tl.store(out_ptr + latents64[:, None] * stride_om + cols[None, :] * stride_od,
                     acc.to(out_ptr.dtype.element_ty), mask=latent_ok[:, None] & col_ok[None, :])
            if FUSE_DOT:
                # The next column block reads back the partial dots stored above, and the
                # thread that loads an element need not be the one that stored it (1-D
                # tensors are replicated across a program's threads): without a barrier the
                # read can miss the write. (On the H200 the tuner rejected the launch configs
                # that take this path more often: BLOCK_P 32, BLOCK_D 64.)
                tl.debug_barrier()
    if COEF_SUM:
        tl.store(coef_sum_ptr + latents, coef_sum, mask=latent_ok)


# Candidate launch configs, the first of each list being the default (and the one the CPU
# interpreter runs). Sizes chosen for H200-class GPUs (132 SMs, 50 MB L2).
#
# The tiles kernel's L2 footprint is about (resident programs x BLOCK_N / N) column blocks
# of the named rows: 132 x per_sm x BLOCK_N / 4096 x 113k rows x BLOCK_D x 2 B at the goal
# shape, 15-30 MB for the persistent configs below; its bytes in flight per SM are
# per_sm x BLOCK_N x BLOCK_D x UNROLL x 2 B (32-128 KB). per_sm=None launches one program
# per item (no cap: the layout of the first version, kept as a candidate).
#
# 8 programs of 4 warps per SM (64 registers each: the whole register file) was the best
# footprint on the H200 in bench/results/h200-run6 (0.389 ms against 0.47 for the best
# below it at the goal shape, N 4096, k 64; 1.35 against 1.73 ms at N 16384).
GATHER_TILES_LARGE = Tuner("gather_tiles_large", [
    dict(BLOCK_N=8, BLOCK_D=128, UNROLL=8, per_sm=8, num_warps=4),
    dict(BLOCK_N=16, BLOCK_D=64, UNROLL=8, per_sm=8, num_warps=4),
    dict(BLOCK_N=4, BLOCK_D=128, UNROLL=8, per_sm=16, num_warps=2),
    dict(BLOCK_N=16, BLOCK_D=64, UNROLL=8, per_sm=4, num_warps=4),
    dict(BLOCK_N=8, BLOCK_D=128, UNROLL=8, per_sm=4, num_warps=4),
    dict(BLOCK_N=16, BLOCK_D=64, UNROLL=8, per_sm=2, num_warps=4),
    dict(BLOCK_N=32, BLOCK_D=64, UNROLL=4, per_sm=2, num_warps=8),
    dict(BLOCK_N=8, BLOCK_D=256, UNROLL=8, per_sm=2, num_warps=8),
    dict(BLOCK_N=4, BLOCK_D=128, UNROLL=16, per_sm=8, num_warps=4),
    dict(BLOCK_N=16, BLOCK_D=64, UNROLL=4, STAGES=3, per_sm=4, num_warps=4),
    dict(BLOCK_N=16, BLOCK_D=256, UNROLL=4, per_sm=None, num_warps=4),
    dict(BLOCK_N=16, BLOCK_D=512, UNROLL=2, per_sm=None, num_warps=8),
    # Rows kept in L2 ahead of the output (won two N=16384, k=32 keys on the H200, within a few %).
    dict(BLOCK_N=8, BLOCK_D=128, UNROLL=8, per_sm=4, num_warps=4, KEEP_TABLE=True),
    dict(BLOCK_N=4, BLOCK_D=256, UNROLL=16, per_sm=4, num_warps=8, KEEP_TABLE=True),
])
# Packed tables (packed.py): BLOCK_D is the packing width. Timed on the H200 in run 6 at
# N 4096 / 16384: 0.336 / 1.21, 0.360 / 1.03, 0.336 / 1.25, 0.422 / 2.07 ms, 0.456 / 1.65 ms.
GATHER_TILES_PACKED = Tuner("gather_tiles_packed", [
    dict(BLOCK_N=8, BLOCK_D=packed.PACK_WIDTH, UNROLL=8, per_sm=8, num_warps=4),
    dict(BLOCK_N=16, BLOCK_D=packed.PACK_WIDTH, UNROLL=4, per_sm=8, num_warps=4),
    dict(BLOCK_N=4, BLOCK_D=packed.PACK_WIDTH, UNROLL=8, per_sm=16, num_warps=2),
    dict(BLOCK_N=4, BLOCK_D=packed.PACK_WIDTH, UNROLL=16, per_sm=8, num_warps=4),
    dict(BLOCK_N=8, BLOCK_D=packed.PACK_WIDTH, UNROLL=8, per_sm=4, num_warps=4),
])
GATHER_TILES_SMALL = Tuner("gather_tiles_small", [
    dict(BLOCK_N=4, BLOCK_D=128, UNROLL=8, per_sm=None, num_warps=4),
    dict(BLOCK_N=2, BLOCK_D=256, UNROLL=8, per_sm=None, num_warps=4),
    dict(BLOCK_N=8, BLOCK_D=64, UNROLL=8, per_sm=None, num_warps=4),
    dict(BLOCK_N=1, BLOCK_D=128, UNROLL=16, per_sm=None, num_warps=4),
])
GATHER_SLOTS = Tuner("gather_slots", [
    dict(BLOCK_K=64, BLOCK_D=64, num_warps=4),
    dict(BLOCK_K=32, BLOCK_D=128, num_warps=4),
    dict(BLOCK_K=64, BLOCK_D=32, num_warps=2),
    dict(BLOCK_K=128, BLOCK_D=32, num_warps=4),
    dict(BLOCK_K=16, BLOCK_D=128, num_warps=2),
])
GATHER_DOT = Tuner("gather_dot", [
    dict(BLOCK_K=16, BLOCK_D=256, num_warps=4),
    dict(BLOCK_K=32, BLOCK_D=128, num_warps=4),
    dict(BLOCK_K=64, BLOCK_D=128, num_warps=8),
])
# No BLOCK_D=128 config with 4 warps and 3 stages: on the H200 that one gave a few fused
# dots (d acts) wrong by about one column block's share, differently from run to run, at
# the GPU test's shape, and the tuner rejected every other config against it at width 576
# (scripts/gpu/diagnose_kernels.py; the same loop with 1 stage or 8 warps was exact in every
# run). The fast path has no shared state between threads, which points at the compiler's
# pipelining of that loop; the configs below were all exact there.
SCATTER_ROWS = Tuner("scatter_rows", [
    dict(BLOCK_L=16, BLOCK_P=64, BLOCK_D=64, num_warps=4, num_stages=4),
    dict(BLOCK_L=16, BLOCK_P=128, BLOCK_D=64, num_warps=4, num_stages=3),
    dict(BLOCK_L=32, BLOCK_P=128, BLOCK_D=64, num_warps=8, num_stages=3),
    dict(BLOCK_L=16, BLOCK_P=64, BLOCK_D=128, num_warps=8, num_stages=3),
    dict(BLOCK_L=16, BLOCK_P=64, BLOCK_D=128, num_warps=4, num_stages=1),
])

_SLOTS_LAUNCH = DirectLaunch(_gather_slots_kernel)

# One-token plans: everything a no-grad decode of one call signature needs (Triton's C
# launcher of the verified compiled kernel, grid, integer arguments), so that a repeat call
# with the same shapes, strides, dtypes and devices costs a dict lookup, an allocation and
# one C call with the pointers as ints (launch.c_launcher: no Python wrapper, no driver
# pointer query per argument).
_LEAN_PLANS: dict[tuple, tuple] = {}
_LEAN_MAX_PLANS = 256
_SLOTS_LAUNCH.on_disable.append(_LEAN_PLANS.clear)
_lean_off: list[str] = []
"""Why plans were switched off for the process (empty while they are on)."""
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # absent from CPU-only builds


def lean_signature(acts, indices, W_dec, b_dec) -> tuple:
    """What a one-token plan depends on: shapes, strides, dtypes and devices of every input."""
    bias = None if b_dec is None else (b_dec.shape, b_dec.stride(), b_dec.dtype, b_dec.device)
    return (acts.shape, acts.stride(), acts.dtype, acts.device, indices.shape, indices.stride(), indices.dtype,
            indices.device, W_dec.shape, W_dec.stride(), W_dec.dtype, W_dec.device, bias)


def lean_decode(acts, indices, W_dec, b_dec) -> torch.Tensor | None:
    """decode_forward through the stored plan of this call's lean_signature; None when it has none (yet)."""
    plan = _LEAN_PLANS.get(lean_signature(acts, indices, W_dec, b_dec))
    if plan is None:
        return None
    launch, function, cooperative, pdl, metadata, grid_x, grid_y, int_args, out_size, device_index = plan
    out = acts.new_empty(out_size)  # decode_forward's output dtype is acts' dtype
    out_ptr = out.data_ptr()
    launch(grid_x, grid_y, 1, _raw_stream(device_index), function, cooperative, pdl, None, None, metadata,
           None, None, None, acts.data_ptr(), indices.data_ptr(), W_dec.data_ptr(),
           out_ptr if b_dec is None else b_dec.data_ptr(), out_ptr, *int_args)
    return out


def _store_plan(signature: tuple, compiled, grid: tuple, int_args: tuple, inputs: tuple, out: torch.Tensor) -> None:
    """Store a one-token plan after checking that it writes the bits the regular launch wrote to `out`.

    `inputs` = (acts, indices, W_dec, b_dec) of the call that just filled `out`. A plan that
    raises or differs switches plans off for the process (with a warning); decodes then keep
    the direct launch.
    """
    c_launch = c_launcher(compiled)
    if c_launch is None:
        _switch_plans_off("this Triton's launcher has another form")
        return
    _LEAN_PLANS[signature] = (*c_launch, grid[0], grid[1], int_args, tuple(out.shape), out.device.index)
    try:
        planned = lean_decode(*inputs)
        same = torch.equal(planned.view(torch.uint8), out.view(torch.uint8))  # bits: NaN-safe
    except Exception as error:  # noqa: BLE001 (any launcher mismatch: keep the direct launch)
        _switch_plans_off(f"{type(error).__name__}: {error}")
        return
    if not same:
        _switch_plans_off("a planned launch wrote other bits than the regular launch")


def _switch_plans_off(why: str) -> None:
    _lean_off.append(why)
    _LEAN_PLANS.clear()
    log.warning("kernels: one-token decode plans switched off (%s); using direct launches", why)


_sm_counts: dict[int, int] = {}
"""device index -> multiprocessor count (asked once per device)."""


def _programs(device: torch.device, per_sm: int | None, n_items: int) -> int:
    """Grid size of a persistent launch: per_sm programs per multiprocessor, at most one per item."""
    if per_sm is None:
        return max(1, n_items)
    if interpreting() or device.type != "cuda":
        sms = 2  # the CPU interpreter: a small grid, so every program walks several items
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        sms = _sm_counts.get(index)
        if sms is None:
            sms = _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return max(1, min(n_items, sms * per_sm))


def gather_sum(
    coefs: torch.Tensor,
    indices: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: dict | None = None,
    plan_signature: tuple | None = None,
    packed_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[n] = sum_j coefs[n, j] * table[indices[n, j]] (+ bias): [N, k] x [M, D] -> [N, D] in out_dtype.

    Any strides; fp32 accumulation; out_dtype defaults to coefs' dtype. `config` (a tiles
    kernel config) bypasses the tuner and the other routes (the benchmark's naive baseline).
    `plan_signature` (decode_forward's lean_signature): store a one-token plan under it when
    the call ran a verified direct launch of the slots kernel. `packed_table`:
    packed.pack_rows(table), which the tiles kernel then reads instead of `table`.
    """
    n_rows, k = coefs.shape
    n_latents, width = table.shape
    out_dtype = out_dtype or coefs.dtype
    if config is None and k >= dense.DENSE_MIN_K:
        compaction = dense.choose(indices, n_latents, width, coefs.dtype, table.element_size())
        if compaction is not None:
            return dense.gather_sum(coefs, compaction, table, bias, out_dtype)
    out = torch.empty(n_rows, width, dtype=out_dtype, device=coefs.device)
    if n_rows == 0 or width == 0:
        return out
    if n_rows <= FEW_ROWS and config is None:
        _gather_slots(coefs, indices, table, bias, out, plan_signature if k < dense.DENSE_MIN_K else None)
    else:
        _gather_tiles(coefs, indices, table, bias, out, config, packed_table)
    return out


def _gather_slots(coefs, indices, table, bias, out, plan_signature: tuple | None = None) -> None:
    n_rows, k = coefs.shape
    n_latents, width = table.shape
    bias_arg = bias if bias is not None else out  # never read without HAS_BIAS
    args = (coefs, indices, table, bias_arg, out, k, n_latents, width, *coefs.stride(), *indices.stride(),
            *table.stride(), bias_arg.stride(0), *out.stride())
    direct = max(args[5:]) < 2**31 and min(args[5:]) >= 0  # ints the compiled code takes as i32
    dtypes = (coefs.dtype, indices.dtype, table.dtype, bias_arg.dtype, out.dtype, bias is not None, out.device.index)

    def launch(config: dict):
        meta, options = launch_args(config)
        meta = dict(meta, HAS_BIAS=bias is not None)
        grid = (n_rows, triton.cdiv(width, meta["BLOCK_D"]))
        if direct:
            _SLOTS_LAUNCH(dtypes + (id(config),), grid, args, meta, options, out)
        else:
            _gather_slots_kernel[grid](*args, **meta, **options)

    key = (bucket(n_rows), k, width, bucket(n_latents)) + dtypes[:5]
    config = GATHER_SLOTS.pick(key, coefs.device, launch, outputs=lambda: (out,))
    launch(config)
    if (plan_signature is not None and direct and not _lean_off and len(_LEAN_PLANS) < _LEAN_MAX_PLANS
            and not tuning_forced()):
        entry = _SLOTS_LAUNCH.verified_entry(dtypes + (id(config),))
        if entry is not None:
            compiled, tail = entry
            grid = (n_rows, triton.cdiv(width, launch_args(config)[0]["BLOCK_D"]))
            _store_plan(plan_signature, compiled, grid, args[5:] + tail, (coefs, indices, table, bias), out)


def _gather_tiles(coefs, indices, table, bias, out, config, packed_table=None) -> None:
    n_rows, k = coefs.shape
    n_latents, width = table.shape
    bias_arg = bias if bias is not None else out  # never read without HAS_BIAS
    tuner = GATHER_TILES_SMALL if n_rows <= 256 else GATHER_TILES_LARGE
    if packed_table is not None:
        if packed_table.shape != (triton.cdiv(width, packed.PACK_WIDTH), n_latents, packed.PACK_WIDTH):
            raise ValueError(f"packed_table {tuple(packed_table.shape)} is not pack_rows of a {tuple(table.shape)} table")
        table, tuner = packed_table, GATHER_TILES_PACKED
    strides = (*coefs.stride(), *indices.stride(), *table.stride()[-2:], bias_arg.stride(0), *out.stride())

    def launch(config: dict):
        meta, options = launch_args(config)
        n_row_tiles = triton.cdiv(n_rows, meta["BLOCK_N"])
        n_items = n_row_tiles * triton.cdiv(width, meta["BLOCK_D"])
        grid = (_programs(coefs.device, config.get("per_sm"), n_items),)
        _gather_tiles_kernel[grid](
            coefs, indices, table, bias_arg, out, n_rows, k, n_latents, width, n_row_tiles, n_items, *strides,
            HAS_BIAS=bias is not None, PACKED=packed_table is not None, **meta, **options,
        )

    key = (bucket(n_rows), k, width, bucket(n_latents), coefs.dtype, table.dtype, out.dtype, bias is not None)
    launch(config or tuner.pick(key, coefs.device, launch, outputs=lambda: (out,)))


def gather_dot(rows: torch.Tensor, indices: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """out[n, j] = <rows[n], table[indices[n, j]]>: [N, D], [N, k], [M, D] -> [N, k] fp32."""
    n_rows, k = indices.shape
    n_latents, width = table.shape
    if k >= dense.DENSE_MIN_K:
        compaction = dense.choose(indices, n_latents, width, rows.dtype, table.element_size())
        if compaction is not None:
            return dense.gather_dot(rows, compaction, table)
    out = torch.zeros(n_rows, k, dtype=torch.float32, device=rows.device)
    if n_rows == 0 or k == 0:
        return out

    def launch(config: dict):
        meta, options = launch_args(config)
        grid = (n_rows, triton.cdiv(k, meta["BLOCK_K"]))
        _gather_dot_kernel[grid](
            rows, indices, table, out, k, n_latents, width,
            rows.stride(0), rows.stride(1), indices.stride(0), indices.stride(1),
            table.stride(0), table.stride(1), out.stride(0), out.stride(1),
            **meta, **options,
        )

    key = (bucket(n_rows), k, width, rows.dtype, table.dtype)
    launch(GATHER_DOT.pick(key, rows.device, launch, outputs=lambda: (out,)))
    return out


def sort_pairs(indices: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent ids of all (row, slot) pairs in ascending order, the flat pair id n * k + j of each).

    int32 keys when they fit (a faster radix sort); stable, so equal latents keep row order
    and the summation order of scatter_rows is deterministic.
    """
    keys = indices.reshape(-1)
    if n_latents < 2**31 and keys.dtype != torch.int32:
        keys = keys.to(torch.int32)
    sorted_keys, perm = torch.sort(keys, stable=True)
    return sorted_keys, perm


def scatter_rows(
    coefs: torch.Tensor,
    indices: torch.Tensor,
    rows: torch.Tensor,
    n_out: int,
    out_dtype: torch.dtype,
    dot_table: torch.Tensor | None = None,
    coef_sums: bool = False,
    skip_zero: bool = False,
    out: torch.Tensor | None = None,
    accumulate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(out [n_out, D], dots [N, k] fp32 or None, coef_sums [n_out] fp32 or None).

    out[l] = sum over (n, j) with indices[n, j] == l of coefs[n, j] * rows[n] (zero rows for
    latents nobody names); with `dot_table` [n_out, D] also dots[n, j] = <rows[n], dot_table[indices[n, j]]>;
    with `coef_sums` also sums[l] = sum of the coefficients naming l. `skip_zero` lets pairs
    with a zero coefficient skip their row load (only valid without dot_table). `out` may be
    given (any strides, e.g. a transposed view) to write into; with `accumulate` the rows are
    added to what `out` holds instead.
    """
    n_rows, k = coefs.shape
    width = rows.shape[1]
    if k >= dense.DENSE_MIN_K:
        compaction = dense.choose(indices, n_out, width, coefs.dtype, rows.element_size())
        if compaction is not None:
            return dense.scatter_rows(coefs, compaction, rows, n_out, out_dtype, dot_table, coef_sums, out, accumulate)
    if accumulate and out is not None:
        part, dots, sums = _scatter_rows_sorted(coefs, indices, rows, n_out, out_dtype, dot_table, coef_sums, skip_zero, None)
        out += part
        return out, dots, sums
    return _scatter_rows_sorted(coefs, indices, rows, n_out, out_dtype, dot_table, coef_sums, skip_zero, out)


def _scatter_rows_sorted(coefs, indices, rows, n_out, out_dtype, dot_table, coef_sums, skip_zero, out):
    """scatter_rows by the latent-sorted Triton kernel (see scatter_rows for the contract)."""
    n_rows, k = coefs.shape
    width = rows.shape[1]
    n_pairs = n_rows * k
    device = coefs.device
    if out is None:
        out = torch.empty(n_out, width, dtype=out_dtype, device=device)
    sums = torch.zeros(n_out, dtype=torch.float32, device=device) if coef_sums else None
    sorted_keys, perm = sort_pairs(indices, n_out)
    fuse_dot = dot_table is not None
    # The matrix products run in the precision of the codes and rows: fp32 operands (exact
    # fp32 FMA) when either is fp32, else their half dtype, with the weights of the fused
    # dot rounded to it (as autocast rounds fp32 weights for a bf16 matmul).
    dot_fp32 = torch.float32 in (coefs.dtype, rows.dtype) or (coefs.dtype != rows.dtype)
    table_arg = dot_table if fuse_dot else rows
    # Pairs naming no valid latent are never visited: their dot stays 0.
    dots = torch.zeros(max(n_pairs, 1), dtype=torch.float32, device=device) if fuse_dot else None
    group_starts: dict[int, torch.Tensor] = {}

    def launch(config: dict):
        meta, options = launch_args(config)
        block_l = meta["BLOCK_L"]
        n_groups = triton.cdiv(n_out, block_l)
        if block_l not in group_starts:
            bounds = torch.arange(0, n_groups + 1, device=device, dtype=torch.int64) * block_l
            group_starts[block_l] = torch.searchsorted(sorted_keys, bounds.to(sorted_keys.dtype))
        _scatter_rows_kernel[(n_groups,)](
            perm, sorted_keys, group_starts[block_l], coefs, rows, out, table_arg,
            dots if fuse_dot else out, sums if sums is not None else out,
            n_out, k, width,
            coefs.stride(0), coefs.stride(1), rows.stride(0), rows.stride(1),
            out.stride(0), out.stride(1), table_arg.stride(0), table_arg.stride(1),
            FUSE_DOT=fuse_dot, COEF_SUM=coef_sums, SKIP_ZERO=skip_zero and not fuse_dot, DOT_FP32=dot_fp32,
            **meta, **options,
        )

    if n_out == 0 or width == 0:
        return out, (torch.zeros(n_rows, k, dtype=torch.float32, device=device) if fuse_dot else None), sums

    def written():
        return (out,) + ((dots,) if fuse_dot else ()) + ((sums,) if sums is not None else ())

    key = (bucket(n_pairs), bucket(n_out), width, coefs.dtype, rows.dtype, out.dtype, fuse_dot)
    launch(SCATTER_ROWS.pick(key, device, launch, outputs=written))
    return out, (dots[:n_pairs].view(n_rows, k) if fuse_dot else None), sums


def decode_forward(
    acts: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None,
    no_grad: bool = False,
) -> torch.Tensor:
    """Triton twin of reference.decode_forward: [N, k], [N, k], [d_sae, d_out], [d_out]? -> [N, d_out].

    no_grad (the public op's lean path: nothing needs a gradient) lets large decodes on CUDA
    read a packed copy of W_dec (packed.packed_table decides when one pays).
    """
    on_gpu = acts.device.type == "cuda" and not interpreting()
    few = acts.shape[0] <= FEW_ROWS and on_gpu
    signature = lean_signature(acts, indices, W_dec, b_dec) if few else None
    table = None
    if on_gpu and not few:
        if no_grad:
            table = packed.packed_table(W_dec, acts.shape[0])
        else:
            packed.drop_stale(W_dec)
    return gather_sum(acts, indices, W_dec, b_dec, out_dtype=acts.dtype, plan_signature=signature, packed_table=table)


def decode_backward(
    grad_y: torch.Tensor,
    acts: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    need_acts: bool = True,
    need_weight: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Triton twin of reference.decode_backward: (d_acts in acts' dtype, d_W_dec in W_dec's dtype).

    With both needed, one latent-sorted pass writes d_W_dec and the gathered dots together.
    """
    if need_weight:
        d_weight, dots, _ = scatter_rows(
            acts, indices, grad_y, W_dec.shape[0], W_dec.dtype, dot_table=W_dec if need_acts else None
        )
        return (dots.to(acts.dtype) if need_acts else None), d_weight
    if need_acts:
        return gather_dot(grad_y, indices, W_dec).to(acts.dtype), None
    return None, None
