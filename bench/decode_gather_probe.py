"""Can the decode forward's gather get closer to the H200's L2 rate? Two untried designs, timed (GPU only).

The decode forward at its goal shape (N 4096, k 64, d_sae 131072, d_in 4096, bf16, uniform
latents) must bring 2.15 GB of named row segments from L2 to the SMs and read the 0.93 GB
of named rows from HBM once. The shipped tiles kernel (`_gather_tiles_kernel`) takes
0.47 ms, 0.51 of the L2-read bound; its gathers from an L2-resident table arrive at 6.3 TB/s
against 8.95 TB/s for plain streaming reads (`l2_probe.py`). This probe times, in one run
and against that kernel and the dense matmul:

- MMA: the k slots of a tile of BLOCK_N tokens are gathered as one [BLOCK_N x SLOTS, BLOCK_D]
  block that feeds `tl.dot` with a block-diagonal coefficient matrix [BLOCK_N, BLOCK_N x SLOTS]
  (each row holds its token's coefficients). The products are exact (bf16 x bf16 in fp32);
  the point is that a load feeding a dot is software-pipelined by Triton into asynchronous
  copies to shared memory (`num_stages` deep), so many more gathers are in flight than
  registers allow. The wasted FLOPs (BLOCK_N x the useful ones: 34 GFLOP at BLOCK_N 16) are
  cheap on the tensor cores.
- BLOCKED: W_dec copied once into column-block-major layout [d_in / BLOCK_D, d_sae, BLOCK_D],
  so that one column block (the whole GPU's working set at a time) is one contiguous range,
  optionally with slices of a later column block prefetched into L2 (AHEAD rounds of the
  persistent grid or AHEAD_BLOCKS column blocks ahead; one `prefetch.global.L2` per line,
  or with BULK one TMA `cp.async.bulk.prefetch.L2` per slice; no data to the SMs), so that
  HBM is read as a stream instead of as random 128-256 byte segments (2.9 TB/s). An
  inference-only layout (a 1 GB copy at this shape); timed here to see whether it can pay.

Each variant is checked against an fp32 reference before it is timed. The `designs`,
`prefetch` and `fit` sets also run at a table that fits in L2 (d_sae 16384, d_in 1024),
which gives each kernel's gather rate from L2; `packed` and `occupancy` at N 16384 instead.
Results of the five sets on the H200: bench/results/h200-run6/, bench/README.md.

    python bench/decode_gather_probe.py --set designs|packed|occupancy|prefetch|fit --out DIR
    python bench/decode_gather_probe.py --set packed --compile   # no GPU: sm_90 registers per variant
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@triton.jit
def _prefetch_l2(addresses):
    """One L2 prefetch per element of the int64 address tensor (nothing comes back to the SM)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [addresses],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _bulk_prefetch_l2(address, n_bytes):
    """Thread 0 of the program asks the TMA unit to bring n_bytes (a multiple of 16) at address into L2."""
    tl.inline_asm_elementwise(
        "{\n\t.reg .pred first;\n\t.reg .b32 thread;\n\tmov.u32 thread, %tid.x;\n\t"
        "setp.eq.u32 first, thread, 0;\n\t@first cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;\n\t}",
        "=r,l,r", [address, n_bytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _probe_kernel(
    coef_ptr, idx_ptr, table_ptr, out_ptr, table_address,
    N, K, M, D, n_row_tiles, n_items, ahead_items,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SLOTS: tl.constexpr, STAGES: tl.constexpr,
    MMA: tl.constexpr, BLOCKED: tl.constexpr, PREFETCH: tl.constexpr, PF_LINES: tl.constexpr,
    CARRY: tl.constexpr = False, KEEP: tl.constexpr = False,
):
    # coef, idx: [N, K] contiguous; out: [N, D] contiguous; table: [M, D] row-major, or
    # [D / BLOCK_D, M, BLOCK_D] contiguous when BLOCKED.
    programs = tl.num_programs(0)
    P: tl.constexpr = BLOCK_N * SLOTS
    pairs = tl.arange(0, P)
    owner = pairs // SLOTS
    within = pairs - owner * SLOTS
    block_diagonal = tl.arange(0, BLOCK_N)[:, None] == owner[None, :]
    slice_rows = tl.cdiv(M, n_row_tiles)
    for item in tl.range(tl.program_id(0), n_items, programs):
        col_block = item // n_row_tiles
        row_tile = item - col_block * n_row_tiles
        if PREFETCH > 0:
            # The slice (row_tile', 1 / n_row_tiles of the rows) of the column block of item
            # item + ahead_items: every slice of every column block is prefetched once,
            # ahead_items before the item of the same number runs (bulk: one TMA request).
            ahead = item + ahead_items
            if ahead < n_items:
                ahead_block = ahead // n_row_tiles
                ahead_tile = ahead - ahead_block * n_row_tiles
                first = ahead_block.to(tl.int64) * M * BLOCK_D + ahead_tile.to(tl.int64) * slice_rows * BLOCK_D
                end = tl.minimum(first + slice_rows * BLOCK_D, (ahead_block.to(tl.int64) + 1) * M * BLOCK_D)
                if PREFETCH == 2:
                    _bulk_prefetch_l2(table_address + first * 2, ((end - first) * 2).to(tl.int32))
                else:
                    for line0 in range(first, end, PF_LINES * 64):
                        lines = line0 + tl.arange(0, PF_LINES) * 64  # 64 bf16 = one 128-byte line
                        _prefetch_l2(table_address + tl.minimum(lines, end - 1) * 2)
        cols = col_block * BLOCK_D + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        if BLOCKED:
            col_part = col_block.to(tl.int64) * M * BLOCK_D + tl.arange(0, BLOCK_D)
            row_stride = BLOCK_D
        else:
            col_part = cols.to(tl.int64)
            row_stride = D
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        if MMA:
            token = row_tile * BLOCK_N + owner
            token_ok = token < N
            token64 = token.to(tl.int64)
            if CARRY:
                # The next group's indices are loaded one iteration early and carried, so the
                # gather's address does not wait on a load of its own iteration.
                ok = token_ok & (within < K)
                latent = tl.load(idx_ptr + token64 * K + within, mask=ok, other=0).to(tl.int64)
                coef = tl.load(coef_ptr + token64 * K + within, mask=ok, other=0.0)
                for j0 in tl.range(0, K, SLOTS, num_stages=STAGES):
                    slot = j0 + within
                    live = token_ok & (slot < K) & (coef != 0.0) & (latent >= 0) & (latent < M)
                    next_ok = token_ok & (slot + SLOTS < K)
                    next_latent = tl.load(idx_ptr + token64 * K + slot + SLOTS, mask=next_ok, other=0).to(tl.int64)
                    next_coef = tl.load(coef_ptr + token64 * K + slot + SLOTS, mask=next_ok, other=0.0)
                    w = tl.load(table_ptr + latent[:, None] * row_stride + col_part[None, :],
                                mask=live[:, None] & col_ok[None, :], other=0.0)
                    c = tl.where(block_diagonal, coef[None, :], 0.0).to(w.dtype)
                    acc = tl.dot(c, w, acc)
                    latent = next_latent
                    coef = next_coef
            else:
                for j0 in tl.range(0, K, SLOTS, num_stages=STAGES):
                    slot = j0 + within
                    ok = token_ok & (slot < K)
                    latent = tl.load(idx_ptr + token64 * K + slot, mask=ok, other=0).to(tl.int64)
                    coef = tl.load(coef_ptr + token64 * K + slot, mask=ok, other=0.0)
                    live = ok & (coef != 0.0) & (latent >= 0) & (latent < M)
                    w = tl.load(table_ptr + latent[:, None] * row_stride + col_part[None, :],
                                mask=live[:, None] & col_ok[None, :], other=0.0)
                    c = tl.where(block_diagonal, coef[None, :], 0.0).to(w.dtype)
                    acc = tl.dot(c, w, acc)
        else:
            rows = row_tile * BLOCK_N + tl.arange(0, BLOCK_N)
            row_ok = rows < N
            rows64 = rows.to(tl.int64)
            for j0 in tl.range(0, K, SLOTS, num_stages=STAGES):
                for u in tl.static_range(SLOTS):
                    ok = row_ok & (j0 + u < K)
                    latent = tl.load(idx_ptr + rows64 * K + j0 + u, mask=ok, other=0).to(tl.int64)
                    coef = tl.load(coef_ptr + rows64 * K + j0 + u, mask=ok, other=0.0).to(tl.float32)
                    live = ok & (coef != 0.0) & (latent >= 0) & (latent < M)
                    w = tl.load(table_ptr + latent[:, None] * row_stride + col_part[None, :],
                                mask=live[:, None] & col_ok[None, :], other=0.0,
                                eviction_policy="evict_last" if KEEP else "")
                    acc += coef[:, None] * w.to(tl.float32)
        rows = row_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(rows < N)[:, None] & col_ok[None, :], eviction_policy="evict_first" if KEEP else "")


def _variant(name, **config):
    base = dict(BLOCK_N=16, BLOCK_D=64, SLOTS=8, STAGES=1, MMA=False, CARRY=False, KEEP=False, BLOCKED=False, AHEAD=0, PF_LINES=256,
                per_sm=4, num_warps=4)
    base.update(config)
    return name, base


VARIANTS = [
    _variant("fma (shipped default)"),
    _variant("fma bd128 n8", BLOCK_N=8, BLOCK_D=128),
    _variant("mma s4 bd64 st3 (no carry)", MMA=True, SLOTS=4, STAGES=3, per_sm=2),
    _variant("mma s8 bd128 st3 (no carry)", MMA=True, SLOTS=8, BLOCK_D=128, STAGES=3, per_sm=1),
    *[_variant(f"mma carry s{s} bd{bd} st{st} ps{ps} w{w}", MMA=True, CARRY=True, SLOTS=s, BLOCK_D=bd, STAGES=st,
               per_sm=ps, num_warps=w)
      for s, bd, st, ps, w in [
          (4, 64, 3, 2, 4), (4, 64, 4, 2, 4), (4, 64, 6, 2, 4), (4, 64, 4, 4, 4), (8, 64, 4, 2, 4),
          (8, 64, 3, 1, 4), (8, 64, 5, 1, 8), (2, 64, 6, 4, 4), (4, 128, 4, 1, 4), (4, 128, 3, 2, 4),
          (8, 128, 3, 1, 8), (2, 128, 6, 2, 4), (4, 256, 3, 1, 8)]],
    _variant("fma blocked", BLOCKED=True),
    _variant("fma blocked ahead1", BLOCKED=True, AHEAD=1),
    _variant("fma blocked ahead2", BLOCKED=True, AHEAD=2),
    _variant("mma carry blocked s4 st4", BLOCKED=True, MMA=True, CARRY=True, SLOTS=4, STAGES=4, per_sm=2),
    _variant("mma carry blocked s4 st4 ahead1", BLOCKED=True, MMA=True, CARRY=True, SLOTS=4, STAGES=4, per_sm=2, AHEAD=1),
    _variant("mma carry blocked s4 st4 ahead2", BLOCKED=True, MMA=True, CARRY=True, SLOTS=4, STAGES=4, per_sm=2, AHEAD=2),
    _variant("mma carry blocked s8 st4 ahead1", BLOCKED=True, MMA=True, CARRY=True, SLOTS=8, STAGES=4, per_sm=1, AHEAD=1),
]


def _from_tiles(config: dict, **extra) -> dict:
    """A shipped GATHER_TILES_LARGE candidate in this probe's terms (KEEP_TABLE becomes KEEP)."""
    _, base = _variant("")
    base.update(BLOCK_N=config["BLOCK_N"], BLOCK_D=config["BLOCK_D"], SLOTS=config["UNROLL"],
                STAGES=config.get("STAGES", 1), KEEP=config.get("KEEP_TABLE", False), per_sm=config["per_sm"],
                num_warps=config["num_warps"], **extra)
    return base


def packed_variants() -> list:
    """Run 2: every shipped tiles candidate on row-major and on column-block-major W, plus wider sweeps."""
    from workbench.kernels.decode.triton import GATHER_TILES_LARGE

    out = []
    for config in GATHER_TILES_LARGE.candidates:
        label = f"n{config['BLOCK_N']} bd{config['BLOCK_D']} u{config['UNROLL']} ps{config['per_sm']} w{config['num_warps']}"
        label += " st3" if config.get("STAGES", 1) > 1 else ""
        label += " keep" if config.get("KEEP_TABLE") else ""
        out.append((f"rows   {label}", _from_tiles(config)))
        out.append((f"packed {label}", _from_tiles(config, BLOCKED=True)))
    for n, bd, u, ps, w in [(32, 32, 8, 4, 4), (16, 32, 8, 8, 4), (16, 64, 8, 8, 4), (8, 64, 8, 8, 4),
                            (32, 64, 4, 4, 8), (8, 128, 8, 8, 4), (4, 128, 16, 8, 4), (16, 128, 8, 2, 8),
                            (8, 256, 4, 4, 8), (32, 32, 4, 8, 4)]:
        config = dict(BLOCK_N=n, BLOCK_D=bd, UNROLL=u, per_sm=ps, num_warps=w)
        out.append((f"packed n{n} bd{bd} u{u} ps{ps} w{w}", _from_tiles(config, BLOCKED=True)))
    return out


def occupancy_variants() -> list:
    """Run 3: the packed layout at more resident programs per SM (run 2's best had 8: 64 registers x 128
    threads allow no more), with fewer registers (smaller tiles, 2 warps, or a register cap), and row-major twins."""
    out = []
    for n, bd, u, w, st, keep, maxnreg, per_sm in [
        (16, 64, 8, 4, 1, False, None, (8,)), (16, 64, 8, 4, 1, False, 40, (12,)), (16, 64, 8, 4, 1, False, 32, (16,)),
        (8, 128, 8, 4, 1, False, None, (8,)), (8, 128, 8, 4, 1, False, 40, (12,)),
        (16, 64, 4, 4, 1, False, None, (8, 12)), (16, 128, 4, 4, 1, False, None, (8,)),
        (8, 64, 16, 4, 1, False, None, (8,)), (32, 64, 4, 8, 1, False, None, (4, 5)),
        (8, 64, 8, 2, 1, False, None, (12, 16)), (4, 128, 8, 2, 1, False, None, (12, 16)),
        (16, 64, 8, 4, 1, True, None, (8,)), (16, 64, 4, 4, 2, False, None, (8, 12)),
    ]:
        for ps in per_sm:
            config = dict(BLOCK_N=n, BLOCK_D=bd, UNROLL=u, per_sm=ps, num_warps=w, STAGES=st, KEEP_TABLE=keep)
            label = f"n{n} bd{bd} u{u} ps{ps} w{w}" + (f" st{st}" if st > 1 else "") + (" keep" if keep else "")
            label += f" r{maxnreg}" if maxnreg else ""
            extra = {"maxnreg": maxnreg} if maxnreg else {}
            out.append((f"packed {label}", _from_tiles(config, BLOCKED=True, **extra)))
            if (n, bd, u, w, maxnreg) in [(16, 64, 8, 4, None), (8, 128, 8, 4, None), (16, 64, 4, 4, None)]:
                out.append((f"rows   {label}", _from_tiles(config, **extra)))
    return out


def prefetch_variants() -> list:
    """Run 4: the best packed configs with the next column block's slices prefetched into L2, a
    fraction of a column block ahead (run 1 prefetched whole rounds ahead: 2-4 column blocks,
    more than L2 holds), one TMA bulk request per slice or one prefetch per 128-byte line."""
    out = []
    for n, bd, u, ps, w in [(8, 128, 8, 8, 4), (16, 64, 8, 8, 4), (16, 128, 4, 8, 4), (4, 128, 8, 16, 2)]:
        config = dict(BLOCK_N=n, BLOCK_D=bd, UNROLL=u, per_sm=ps, num_warps=w)
        label = f"n{n} bd{bd} u{u} ps{ps} w{w}"
        out.append((f"packed {label}", _from_tiles(config, BLOCKED=True)))
        for blocks in (0.25, 0.5, 1.0):
            # maxnreg 64: the prefetch's few extra registers must not cost a resident program per SM
            out.append((f"packed {label} bulk {blocks}",
                        _from_tiles(config, BLOCKED=True, AHEAD_BLOCKS=blocks, BULK=True, maxnreg=64)))
        out.append((f"packed {label} lines 0.5", _from_tiles(config, BLOCKED=True, AHEAD_BLOCKS=0.5)))
    return out


def fit_variants() -> list:
    """Run 5: about one column block in flight at a time (BLOCK_N x programs ~ N), so that the
    next block's prefetch fits in L2 beside it (run 4 prefetched while 2-4 blocks were in
    flight, 58 MB and more, and every prefetch slowed the decode)."""
    out = []
    for n, bd, u, ps, w in [(8, 128, 16, 4, 4), (8, 64, 16, 4, 4), (4, 64, 16, 8, 4), (4, 128, 16, 8, 4),
                            (8, 64, 8, 8, 4), (2, 128, 16, 16, 2)]:
        config = dict(BLOCK_N=n, BLOCK_D=bd, UNROLL=u, per_sm=ps, num_warps=w)
        label = f"n{n} bd{bd} u{u} ps{ps} w{w}"
        out.append((f"packed {label}", _from_tiles(config, BLOCKED=True)))
        for blocks in (0.5, 1.0):
            cap = {"maxnreg": 64} if ps * w * 32 * 68 > 65536 else {}
            out.append((f"packed {label} bulk {blocks}", _from_tiles(config, BLOCKED=True, AHEAD_BLOCKS=blocks,
                                                                     BULK=True, **cap)))
    return out


def launch(config: dict, coefs, indices, table, out, n_rows, k, n_latents, width, sms: int):
    """AHEAD (rounds of the persistent grid) or AHEAD_BLOCKS (column blocks) set the prefetch distance."""
    options = {key: config[key] for key in ("num_warps", "maxnreg") if key in config}
    meta = {key: value for key, value in config.items()
            if key not in ("per_sm", "num_warps", "maxnreg", "AHEAD", "AHEAD_BLOCKS", "BULK")}
    n_row_tiles = triton.cdiv(n_rows, config["BLOCK_N"])
    n_items = n_row_tiles * triton.cdiv(width, config["BLOCK_D"])
    programs = n_items if config["per_sm"] is None else max(1, min(n_items, sms * config["per_sm"]))
    ahead_items = config["AHEAD"] * programs + round(config.get("AHEAD_BLOCKS", 0) * n_row_tiles)
    meta["PREFETCH"] = 0 if ahead_items == 0 else (2 if config.get("BULK") else 1)
    address = table.data_ptr() if table.device.type == "cuda" else 0
    return _probe_kernel[(programs,)](coefs, indices, table, out, address, n_rows, k, n_latents, width, n_row_tiles,
                                      n_items, ahead_items, **meta, **options)


def blocked_copy(W: torch.Tensor, block_d: int) -> torch.Tensor:
    """[M, D] -> [D / block_d, M, block_d] contiguous (D a multiple of block_d)."""
    M, D = W.shape
    return W.view(M, D // block_d, block_d).permute(1, 0, 2).contiguous()


def reference(coefs, indices, W) -> torch.Tensor:
    out = torch.empty(coefs.shape[0], W.shape[1], dtype=torch.float32, device=W.device)
    for start in range(0, coefs.shape[0], 256):
        rows = W[indices[start:start + 256]].float()
        out[start:start + 256] = (coefs[start:start + 256, :, None].float() * rows).sum(1)
    return out


def codes(n_rows, k, n_latents, device, seed=0):
    generator = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    for start in range(0, n_rows, 512):
        keys = torch.rand(min(512, n_rows - start), n_latents, device=device, generator=generator)
        chunks.append(keys.topk(k, dim=1).indices)
    idx = torch.cat(chunks).sort(dim=1).values.contiguous()
    acts = (torch.rand(n_rows, k, device=device, generator=generator) + 0.1).to(torch.bfloat16)
    return acts, idx


def time_ms(fn) -> dict:
    from triton.testing import do_bench
    median, p10, p90 = do_bench(fn, warmup=10, rep=80, quantiles=[0.5, 0.1, 0.9])
    return {"ms": median, "p10": p10, "p90": p90}


def run_shape(variants, n_rows, k, n_latents, width, dense: bool) -> dict:
    from workbench.kernels.decode import triton as decode_kernels

    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    torch.manual_seed(0)
    W = (torch.randn(n_latents, width, device=device) / width**0.5).to(torch.bfloat16)
    acts, idx = codes(n_rows, k, n_latents, device)
    want = reference(acts, idx, W)
    gathered = n_rows * k * width * 2
    unique = int(torch.unique(idx).numel())
    result = {"shape": dict(N=n_rows, k=k, d_sae=n_latents, d_in=width), "gathered_GB": gathered / 1e9,
              "unique_rows": unique, "rows": []}

    def record(name, config, fn, out):
        try:
            fn()
            torch.cuda.synchronize()
            err = float((out.float() - want).norm() / want.norm())
            t = time_ms(fn) if err < 1e-2 else None
        except Exception as error:  # noqa: BLE001 (a variant that fails to compile or launch is reported)
            print(f"  {name:<34} FAILED {type(error).__name__}: {str(error)[:160]}", flush=True)
            result["rows"].append({"name": name, "config": config, "error": f"{type(error).__name__}: {error}"[:400]})
            return
        row = {"name": name, "config": config, "rel_err": err, "time": t}
        if t:
            row["gather_TBps"] = gathered / (t["ms"] * 1e-3) / 1e12
        result["rows"].append(row)
        print(f"  {name:<34} " + (f"{t['ms']:.4f} ms  gather {row['gather_TBps']:.2f} TB/s" if t else "WRONG")
              + f"  rel_err {err:.1e}", flush=True)

    out = torch.empty(n_rows, width, device=device, dtype=torch.bfloat16)
    shipped = lambda: decode_kernels.decode_forward(acts, idx, W, None)  # noqa: E731 (tuned on first call)
    shipped()
    record("shipped decode_forward (tuned)", None, shipped, shipped())
    if dense:
        codes_dense = torch.zeros(n_rows, n_latents, device=device, dtype=torch.bfloat16).scatter_(1, idx, acts)
        dense_out = torch.empty(n_rows, width, device=device, dtype=torch.bfloat16)
        result["dense"] = time_ms(lambda: torch.mm(codes_dense, W, out=dense_out))
        print(f"  {'dense matmul':<34} {result['dense']['ms']:.4f} ms", flush=True)
        del codes_dense
    layouts = {}
    for name, config in variants:
        table = W
        if config["BLOCKED"]:
            if config["BLOCK_D"] not in layouts:
                layouts[config["BLOCK_D"]] = blocked_copy(W, config["BLOCK_D"])
                result[f"blocked_copy_bd{config['BLOCK_D']}"] = time_ms(lambda bd=config["BLOCK_D"]: blocked_copy(W, bd))
            table = layouts[config["BLOCK_D"]]
        record(name, config, lambda c=config, t=table: launch(c, acts, idx, t, out, n_rows, k, n_latents, width, sms), out)
    timed = [r for r in result["rows"] if r.get("time")]
    best = min(timed, key=lambda r: r["time"]["ms"])
    result["best"] = best["name"]
    if dense:
        for row in timed:
            row["x_dense"] = result["dense"]["ms"] / row["time"]["ms"]
        print(f"  best: {best['name']} {best['time']['ms']:.4f} ms = {best['x_dense']:.1f}x dense", flush=True)
    return result


def compile_all(variants) -> None:
    """Compile every variant for sm_90 on meta tensors (no GPU): registers, spills, shared memory."""
    from bench.check_kernels_compile import compile_call

    meta = torch.device("meta")
    n_rows, k, n_latents, width = 4096, 64, 131072, 4096
    for name, config in variants:
        kwargs = {key: value for key, value in config.items() if key not in ("per_sm", "AHEAD", "AHEAD_BLOCKS", "BULK")}
        kwargs["PREFETCH"] = 0 if not (config["AHEAD"] or config.get("AHEAD_BLOCKS")) else (2 if config.get("BULK") else 1)
        n_row_tiles = triton.cdiv(n_rows, config["BLOCK_N"])
        args = (torch.empty(n_rows, k, dtype=torch.bfloat16, device=meta), torch.empty(n_rows, k, dtype=torch.long, device=meta),
                torch.empty(n_latents, width, dtype=torch.bfloat16, device=meta),
                torch.empty(n_rows, width, dtype=torch.bfloat16, device=meta), 2**40,
                n_rows, k, n_latents, width, n_row_tiles, n_row_tiles * (width // config["BLOCK_D"]), 1000)
        try:
            report = compile_call(_probe_kernel, args, kwargs)
            print(f"{name:<34} {report}", flush=True)
        except Exception as error:  # noqa: BLE001
            print(f"{name:<34} FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    parser.add_argument("--set", choices=["designs", "packed", "occupancy", "prefetch", "fit"], default="designs",
                        help="designs: MMA, packed and prefetch variants (run 1); packed: the shipped candidates "
                             "on row-major and column-block-major W (run 2); occupancy: more programs per SM (run 3); prefetch: "
                             "L2 prefetch of the next column block (run 4); fit: one column block in flight, with and without "
                             "prefetch (run 5)")
    parser.add_argument("--compile", action="store_true", help="compile every variant for sm_90 (no GPU)")
    args = parser.parse_args()
    variants = {"designs": VARIANTS, "packed": packed_variants, "occupancy": occupancy_variants,
                "prefetch": prefetch_variants, "fit": fit_variants}[args.set]
    variants = variants() if callable(variants) else variants
    if args.compile:
        compile_all(variants)
        return
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
               "set": args.set}
    print("== goal shape (N 4096, k 64, d_sae 131072, d_in 4096)", flush=True)
    results["goal"] = run_shape(variants, 4096, 64, 131072, 4096, dense=True)
    torch.cuda.empty_cache()
    if args.set in ("designs", "prefetch", "fit"):
        print("== table in L2 (N 4096, k 64, d_sae 16384, d_in 1024)", flush=True)
        results["l2_table"] = run_shape(variants, 4096, 64, 16384, 1024, dense=False)
    else:
        print("== N 16384 (k 64, d_sae 131072, d_in 4096)", flush=True)
        results["n16384"] = run_shape(variants, 16384, 64, 131072, 4096, dense=True)
    path = Path(args.out) / f"decode-gather-probe-{args.set}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
