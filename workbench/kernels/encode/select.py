"""Top-k selection for the fast TopK encoder: the k largest pre-activations of each row, exactly.

A custom radix-select kernel (one program per row) was measured on the H200 at twice
torch.topk's time ([4096, 65536] bf16, k=64: 3.9 ms against 2.0 ms) and was removed. But
torch.topk over 65536-long rows is itself 16x off the one-read floor (0.13 ms), so two
exact alternatives are raced against it (`_topk_indices`):

- "chunked": the top k of each 1024- or 4096-long chunk of the row (many short rows, which
  torch handles with one block each), then the top k of those candidates, which contain
  the row's top k;
- "filter": a lower bound T on each row's k-th largest value from its chunk maxima (the
  k-th largest of the maxima of >= k chunks: k chunks each hold a value >= it), then one
  Triton pass (`_collect_candidates_kernel`) that collects every entry >= T into a short
  candidate list per row (tens to hundreds of entries; a per-row atomic counter hands out
  the slots), then a top-k of the candidates. Two streaming reads of the matrix and no
  sort of it. A row whose candidates overflow the list (or that has NaN, where the bound
  fails) sends the call back to torch.topk: one host synchronisation per call checks.

Candidates are put in index order before the last top-k, so that among equal values the
lowest indices win, as in torch.topk on CUDA. On CUDA the first call per shape times every
route that applies and keeps the fastest, but only among routes that selected exactly
plain torch.topk's latents on that call, ties included; elsewhere torch.topk runs (tests
force a route with `tuning.force_config("topk_route", {"route": (name, size)})`, and
`WORKBENCH_KERNELS_TOPK=torch` keeps torch.topk everywhere: bench/gpu_kernels.sh sets it
when its probe of these routes fails).

AuxK's top k_aux among the dead latents gathers the dead columns first ([N, n_dead], one
synchronisation to count them) and runs the top-k on that smaller matrix, instead of a
second top-k over the whole [N, d_sae] with the live latents masked to -inf; with fewer
dead latents than k_aux, or more than half of them dead, it does the masked top-k.
"""

from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl

from workbench.kernels import _interpreter
from workbench.kernels.encode import reference
from workbench.kernels.tuning import bucket, forced_config, interpreting

_interpreter.install()
log = logging.getLogger("workbench.kernels")

CHUNKED_SIZES = (1024, 4096)
"""Chunk lengths of the "chunked" route (a chunk must divide the row and hold >= 2k)."""
FILTER_SIZES = (256, 128)
"""Chunk lengths whose maxima give the "filter" route its bound (the row must hold >= 2k chunks)."""
FILTER_BLOCK = 1024
"""Entries per program of the candidate-collecting kernel."""
_routes: dict[tuple, tuple[str, int]] = {}


@triton.jit
def _collect_candidates_kernel(
    key_ptr, threshold_ptr, count_ptr, out_ptr, M, CAP,
    stride_kn, stride_km, stride_on,
    BLOCK: tl.constexpr,
):
    # One block of one row: append the ids of its entries >= the row's bound to the row's
    # candidate list, at offsets handed out by the row's counter (the list is sorted later).
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M
    # Compared in fp32 (exact for bf16/fp16; also what the CPU interpreter, which holds bf16
    # as raw bits, needs to compare them as numbers).
    values = tl.load(key_ptr + row * stride_kn + offs * stride_km, mask=ok, other=0.0).to(tl.float32)
    take = ok & (values >= tl.load(threshold_ptr + row).to(tl.float32))
    n_take = tl.sum(take.to(tl.int32), axis=0)
    if n_take > 0:
        base = tl.atomic_add(count_ptr + row, n_take)
        slot = base + tl.cumsum(take.to(tl.int32), axis=0) - 1
        tl.store(out_ptr + row * stride_on + slot, offs, mask=take & (slot < CAP))


def _ordered_top(key: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The k best of candidate ids [N, C] (ascending; id M marks an empty slot) by key [N, M]."""
    width = key.shape[1]
    values = key.gather(1, candidates.clamp_max(width - 1))
    values = values.masked_fill(candidates == width, float("-inf"))
    _, pick = values.topk(k, dim=1, sorted=False)
    return candidates.gather(1, pick)


def _chunked_topk(key: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Indices [N, k] (any order) of the k largest per row of key [N, M]: top k per chunk, then of those."""
    n_rows, width = key.shape
    n_chunks = width // chunk
    _, local = key.reshape(n_rows, n_chunks, chunk).topk(k, dim=2, sorted=False)  # [N, C, k]
    offsets = torch.arange(0, width, chunk, device=key.device).view(1, n_chunks, 1)
    candidates, _ = (local + offsets).reshape(n_rows, n_chunks * k).sort(dim=1)
    _, pick = key.gather(1, candidates).topk(k, dim=1, sorted=False)
    return candidates.gather(1, pick)


def _filtered_topk(key: torch.Tensor, k: int, chunk: int) -> torch.Tensor | None:
    """Indices [N, k] (any order) by the bound-and-collect route, or None if a row defeats it."""
    n_rows, width = key.shape
    maxima = key.reshape(n_rows, width // chunk, chunk).amax(dim=2)  # [N, C]
    threshold = maxima.topk(k, dim=1, sorted=False).values.amin(dim=1)  # <= each row's k-th largest
    capacity = min(width, max(1024, 16 * k))
    counts = torch.zeros(n_rows, dtype=torch.int32, device=key.device)
    candidates = torch.full((n_rows, capacity), width, dtype=torch.int32, device=key.device)
    grid = (n_rows, triton.cdiv(width, FILTER_BLOCK))
    _collect_candidates_kernel[grid](
        key, threshold, counts, candidates, width, capacity,
        key.stride(0), key.stride(1), candidates.stride(0),
        BLOCK=FILTER_BLOCK, num_warps=4,
    )
    # Too many candidates, too few (NaN defeats the bound) or a -inf bound: not this route.
    if bool(((counts > capacity) | (counts < k) | (threshold == float("-inf"))).any()):
        return None
    candidates, _ = candidates.long().sort(dim=1)  # index order: ties go to the lowest id
    return _ordered_top(key, candidates, k)


def _run_route(route: tuple[str, int], key: torch.Tensor, k: int) -> torch.Tensor:
    name, size = route
    if name == "chunked":
        return _chunked_topk(key, k, size)
    if name == "filter":
        found = _filtered_topk(key, k, size)
        if found is not None:
            return found
    return key.topk(k, dim=1, sorted=False).indices


def _topk_indices(key: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N, k] (any order) of the k largest entries per row of key [N, M], by the chosen route."""
    n_rows, width = key.shape
    route_key = (bucket(n_rows), width, k, key.dtype, key.device.type)
    route = _routes.get(route_key)
    if route is None:
        route = _routes[route_key] = _choose_route(key, k)
    return _run_route(route, key, k)


def _choose_route(key: torch.Tensor, k: int) -> tuple[str, int]:
    """("torch", 0) or the fastest exact alternative on this call's data (see the module docstring)."""
    n_rows, width = key.shape
    forced = forced_config("topk_route")
    if forced is not None:
        return forced["route"]
    routes = [("chunked", c) for c in CHUNKED_SIZES if width % c == 0 and c >= 2 * k and width // c >= 4]
    routes += [("filter", c) for c in FILTER_SIZES if width % c == 0 and width // c >= 2 * k][:1]
    tune = key.is_cuda and not interpreting() and os.environ.get("WORKBENCH_KERNELS_TUNE", "1") != "0"
    if not routes or not tune or n_rows < 64 or os.environ.get("WORKBENCH_KERNELS_TOPK", "") == "torch":
        return ("torch", 0)
    from triton.testing import do_bench

    plain = key.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    timings = [(do_bench(lambda: key.topk(k, dim=1, sorted=False), warmup=2, rep=10, return_mode="median"), ("torch", 0))]
    for route in routes:
        try:
            # (The filter route returns None where it would fall back to torch.topk: no use here.)
            got = _filtered_topk(key, k, route[1]) if route[0] == "filter" else _run_route(route, key, k)
            same = got is not None and torch.equal(got.sort(dim=1).values, plain)
        except Exception as error:  # noqa: BLE001 (a route that cannot run is not a candidate)
            log.info("kernels: top-k route %s failed on %s: %s", route, tuple(key.shape), error)
            continue
        if not same:
            log.warning("kernels: top-k route %s did not select torch.topk's latents on %s; not used", route, tuple(key.shape))
            continue
        timings.append((do_bench(lambda: _run_route(route, key, k), warmup=2, rep=10, return_mode="median"), route))
    best_ms, best = min(timings, key=lambda item: item[0])
    log.info("kernels: top-k of %s k=%d -> %s (%.4f ms; torch.topk %.4f ms)", tuple(key.shape), k, best, best_ms,
             timings[0][0])
    return best


def select_topk(
    pre: torch.Tensor, k: int, absolute: bool, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(vals [N, k] in pre's dtype, idx [N, k] int64 ascending): the reference selection's twin.

    Without a mask: the k largest of pre (or |pre|) by `_topk_indices`, indices sorted,
    values through the ReLU for TopK. With a mask (AuxK) only masked-in latents compete
    (see the module docstring). The selected set is the reference's up to ties.
    """
    n_rows, width = pre.shape
    if k == 0 or n_rows == 0:
        return reference.select_topk(pre, k, absolute, mask)
    if mask is None:
        idx, _ = _topk_indices(pre.abs() if absolute else pre, k).sort(dim=1)
        vals = pre.gather(1, idx)
        return (vals if absolute else vals.clamp_min(0)), idx
    columns = mask.nonzero().squeeze(1)  # [n_masked_in] ascending (synchronises)
    n_in = columns.numel()
    if n_in < k or 2 * n_in > width:
        return reference.select_topk(pre, k, absolute, mask)
    sub = pre.index_select(1, columns)  # [N, n_masked_in]
    key = sub.abs() if absolute else sub
    _, local = key.topk(k, dim=1, sorted=False)
    local, _ = local.sort(dim=1)  # ascending local ids = ascending latent ids
    vals = sub.gather(1, local)
    if not absolute:
        vals = vals.clamp_min(0)
    return vals, columns[local]
