"""How many bytes per second the SMs of a GPU can read: from L2, and from HBM (GPU only).

The decode forward at its goal shape (N 4096, k 64, d_in 4096, bf16, uniform latents) has
to bring N x k named row segments to the SMs: 2.1 GB, read once per (token, slot), since
two tokens naming the same latent rarely share an SM. Even with every repeat an L2 hit,
that is bounded by the L2-to-SM read rate, which this probe measures with the simplest
possible kernel: every program streams its own chunks of a buffer that fits in L2 (`.cg`
loads, so L1 never serves them; each pass visits the chunks in a rotated order), summing
them so the loads cannot be dropped. The first pass comes from HBM; the rate is taken from
the difference between a long and a short run, so it counts only L2 hits. The same kernel
over a buffer far larger than L2 gives the HBM read rate (read only, where the copy
ceiling counts read + write), and reading random segments of 256 B to 8 KB of it, each
once, shows how much of that a gather of short row segments can get from HBM.

    from bench.l2_probe import read_ceilings; read_ceilings(time_ms)   # time_ms(fn) -> {"ms": ...}
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _stream_kernel(src_ptr, out_ptr, n_chunks, passes, CHUNK: tl.constexpr, UNROLL: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    offsets = tl.arange(0, CHUNK)
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for p in range(passes):
        for c0 in range(pid * UNROLL, n_chunks, programs * UNROLL):
            for u in tl.static_range(UNROLL):
                chunk = (c0 + u + p * 977) % n_chunks  # rotated per pass: no program rereads its own chunk
                acc += tl.load(src_ptr + chunk.to(tl.int64) * CHUNK + offsets, cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + pid * CHUNK + offsets, acc)


# Two kernels rather than one over an index list: the streaming rate must not include an
# index load per chunk, which the random-segment kernel needs.
@triton.jit
def _segments_kernel(src_ptr, order_ptr, out_ptr, n_segments, SEGMENT: tl.constexpr, UNROLL: tl.constexpr):
    # Segment order[s] of SEGMENT elements for s = pid, pid + programs, ...: every segment once, in random order.
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    offsets = tl.arange(0, SEGMENT)
    acc = tl.zeros((SEGMENT,), dtype=tl.float32)
    for s0 in range(pid * UNROLL, n_segments, programs * UNROLL):
        for u in tl.static_range(UNROLL):
            segment = tl.load(order_ptr + s0 + u).to(tl.int64)
            acc += tl.load(src_ptr + segment * SEGMENT + offsets).to(tl.float32)
    tl.store(out_ptr + pid * SEGMENT + offsets, acc)


VARIANTS = [
    dict(CHUNK=4096, UNROLL=2, per_sm=4, num_warps=8),
    dict(CHUNK=4096, UNROLL=4, per_sm=4, num_warps=8),
    dict(CHUNK=2048, UNROLL=4, per_sm=8, num_warps=4),
    dict(CHUNK=8192, UNROLL=2, per_sm=2, num_warps=16),
    dict(CHUNK=2048, UNROLL=8, per_sm=16, num_warps=4),
]


def _rate(time_ms, buffer: torch.Tensor, variant: dict, passes: tuple[int, int]) -> tuple[float, dict]:
    """Bytes per second over the extra passes of the long run, and the raw timings."""
    chunk = variant["CHUNK"]
    n_chunks = buffer.numel() // chunk
    sms = torch.cuda.get_device_properties(buffer.device).multi_processor_count
    programs = min(n_chunks, sms * variant["per_sm"])
    out = torch.empty(programs, chunk, device=buffer.device, dtype=torch.float32)
    times = {}
    for n_passes in passes:
        def run(n_passes=n_passes):
            _stream_kernel[(programs,)](buffer, out, n_chunks, n_passes, CHUNK=chunk, UNROLL=variant["UNROLL"],
                                        num_warps=variant["num_warps"])
        times[n_passes] = time_ms(run)
    extra = (passes[1] - passes[0]) * n_chunks * chunk * buffer.element_size()
    seconds = (times[passes[1]]["ms"] - times[passes[0]]["ms"]) * 1e-3
    return extra / seconds, {str(k): v for k, v in times.items()}


def read_ceilings(time_ms, l2_mb: int = 16, hbm_mb: int = 2048) -> dict:
    """{"l2_read_TBps", "hbm_read_TBps", per-variant rows}: the best over VARIANTS of each."""
    device = torch.device("cuda")
    rows = []
    small = torch.randn(l2_mb * 2**20 // 2, device=device).to(torch.bfloat16)
    for variant in VARIANTS:
        rate, times = _rate(time_ms, small, variant, (10, 50))
        rows.append({"buffer_MB": l2_mb, **variant, "TBps": rate / 1e12, "ms": times})
    del small
    large = torch.randn(hbm_mb * 2**20 // 2, device=device).to(torch.bfloat16)
    for variant in VARIANTS[:3]:
        rate, times = _rate(time_ms, large, variant, (1, 3))
        rows.append({"buffer_MB": hbm_mb, **variant, "TBps": rate / 1e12, "ms": times})
    segments = []
    for segment_bytes in (256, 512, 1024, 2048, 8192):
        # Random segments of a 1 GB buffer, each read once: what HBM gives a gather whose rows are
        # not in L2 (the decode's first read of each named row segment).
        segment = segment_bytes // large.element_size()
        n_segments = large.numel() // segment
        order = torch.randperm(n_segments, device=device, dtype=torch.int32)
        unroll = max(1, 8192 // segment_bytes)
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        out = torch.empty(sms * 8, segment, device=device, dtype=torch.float32)
        t = time_ms(lambda: _segments_kernel[(sms * 8,)](large, order, out, n_segments, SEGMENT=segment,
                                                         UNROLL=unroll, num_warps=4))
        segments.append({"segment_bytes": segment_bytes, "ms": t,
                         "TBps": n_segments * segment_bytes / (t["ms"] * 1e-3) / 1e12})
    del large
    return {
        "hbm_random_segments": segments,
        "l2_read_TBps": max(r["TBps"] for r in rows if r["buffer_MB"] == l2_mb),
        "hbm_read_TBps": max(r["TBps"] for r in rows if r["buffer_MB"] == hbm_mb),
        "variants": rows,
    }
