"""Sparse products with many slots per row, run as dense GEMMs over the latents actually named.

The Triton gather and scatter kernels move one row of the table per (row, slot) pair. That
is right for TopK codes (k = 32..128 slots over a large dictionary), but AuxK asks for
k_aux = d_in / 2 slots per token (1152 at d_in 2304) that all fall among the dead latents
(say 13k of 65k): 4.7M pairs naming each dead row about 360 times. Gathering them moves
tens of GB through L2; the same sums as matrix products over the U latents named are a
few hundred GFLOP, well under a millisecond on the tensor cores:

    named latents L [U] (ascending), local[n, j] = position of indices[n, j] in L
    codes C [N, U]   = the coefficients scattered to their local columns (duplicates summed)
    gather_sum:   out = C @ T[L]                       ([N, U] x [U, D])
    scatter_rows: out[L] = C^T @ R, other rows 0      ([U, N] x [N, D])
    gather_dot (and scatter_rows' fused dots): dots[n, j] = (R @ T[L]^T)[n, local[n, j]]

Finding L needs the count U on the host (one synchronisation), so `choose` is only
consulted for calls with at least DENSE_MIN_K slots per row, and picks this route only
when a simple cost model (gathered bytes at L2 speed against GEMM FLOPs at tensor-core
speed) says it is faster.

Precision follows the Triton kernels. With bf16/fp16 codes the GEMMs run on the tensor
cores in that dtype with fp32 accumulation and fp32 output (`torch.mm(..., out_dtype=
torch.float32)` on CUDA, fp32 products of the same half values on CPU); an fp32 operand
that the kernels would read exactly (the table of the forward and of gather_dot) is split
into two half parts, hi + lo, and multiplied twice, which keeps 16 bits of its mantissa;
the fused dots of scatter_rows round an fp32 table to the codes' dtype, as the kernel
does. A latent named twice in one row has its coefficients summed in fp32 and, with half
codes, rounded to the codes' dtype once (TopK and AuxK rows never repeat a latent). With
fp32 codes everything is fp32. Indices outside [0, n_latents) contribute
nothing, as in the Triton kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DENSE_MIN_K = 128
"""Fewer slots per row than this: always the Triton gather/scatter (no synchronisation)."""
GATHER_BYTES_PER_S = 6e12
"""Rate at which the Triton kernels move gathered rows (mostly L2 hits), measured ~5.5e12 on the H200."""
HALF_FLOPS_PER_S = 4e14
"""bf16/fp16 GEMM rate assumed for these skinny products (the H200 peaks near 7.5e14)."""
FP32_FLOPS_PER_S = 4e13
"""fp32 GEMM rate (no TF32)."""
FIXED_S = 1e-4
"""Overhead of the dense route: the synchronisation, building the codes, gathering T[L]."""


@dataclass(frozen=True)
class Compaction:
    """The latents a [N, k] index tensor names, and each slot's column among them."""

    latents: torch.Tensor
    """[U] int64, ascending: the distinct valid latent ids named."""
    local: torch.Tensor
    """[N, k] int64: position of indices[n, j] in `latents` (0 for an invalid index)."""
    valid: torch.Tensor
    """[N, k] bool: indices[n, j] lies in [0, n_latents)."""


def compact(indices: torch.Tensor, n_latents: int) -> Compaction:
    """The Compaction of indices [N, k] over a dictionary of n_latents rows (synchronises once)."""
    valid = (indices >= 0) & (indices < n_latents)
    safe = torch.where(valid, indices, n_latents).long()  # invalid -> a spare slot past the end
    named = torch.zeros(n_latents + 1, dtype=torch.bool, device=indices.device)
    named.index_fill_(0, safe.reshape(-1), True)
    named = named[:n_latents]
    latents = named.nonzero().squeeze(1)
    position = torch.cumsum(named, 0) - 1
    local = torch.where(valid, position[safe.clamp_max(max(n_latents - 1, 0))], 0)
    return Compaction(latents, local, valid)


def _gemm_dtype(*tensors: torch.Tensor) -> torch.dtype:
    half = (torch.bfloat16, torch.float16)
    if tensors[0].dtype in half and all(t.dtype in half or t.dtype == torch.float32 for t in tensors[1:]):
        return tensors[0].dtype
    return torch.float32


_fp32_output = {"supported": True}


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in fp32, for a and b of one dtype (half: tensor cores, fp32 accumulation and output)."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if not a.is_cuda:
        return torch.mm(a.float(), b.float())  # the same products, exact in fp32
    if _fp32_output["supported"]:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch < 2.8: no fp32 output for half inputs
            _fp32_output["supported"] = False
    return torch.mm(a, b).float()


def _products(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, exact_b: bool) -> torch.Tensor:
    """a @ b in fp32 with operands in `dtype`; `exact_b` keeps an fp32 b to 16 mantissa bits (hi + lo)."""
    a = a.to(dtype)
    if dtype == torch.float32 or b.dtype != torch.float32 or not exact_b:
        return _mm_fp32(a, b.to(dtype))
    hi = b.to(dtype)
    lo = (b - hi.float()).to(dtype)
    return _mm_fp32(a, hi) + _mm_fp32(a, lo)


def choose(
    indices: torch.Tensor, n_latents: int, width: int, coef_dtype: torch.dtype, table_element_size: int
) -> Compaction | None:
    """The Compaction when the dense route should beat the gather for this call, else None.

    indices [N, k]; `width` is the row length D of the table (or of the rows scattered).
    """
    n_rows, k = indices.shape
    if k < DENSE_MIN_K or n_rows == 0 or width == 0:
        return None
    gather_s = n_rows * k * width * table_element_size / GATHER_BYTES_PER_S
    rate = HALF_FLOPS_PER_S if coef_dtype in (torch.bfloat16, torch.float16) else FP32_FLOPS_PER_S
    # Compacting synchronises with the host (the H200 sweep: ~0.35 ms a call at k=128, N=1, far
    # above the gather itself), so first compare with the cheapest dense route, one named latent.
    if gather_s <= 2.0 * n_rows * width / rate + FIXED_S:
        return None
    compaction = compact(indices, n_latents)
    n_named = compaction.latents.numel()
    dense_s = 2.0 * n_rows * n_named * width / rate + FIXED_S
    return compaction if dense_s < gather_s else None


def dense_codes(coefs: torch.Tensor, compaction: Compaction) -> torch.Tensor:
    """C [N, U] fp32: coefficients at their local columns, duplicates summed."""
    n_rows = coefs.shape[0]
    values = torch.where(compaction.valid, coefs.float(), 0.0)
    codes = torch.zeros(n_rows, compaction.latents.numel(), dtype=torch.float32, device=coefs.device)
    return codes.scatter_add_(1, compaction.local, values)


def gather_sum(
    coefs: torch.Tensor,
    compaction: Compaction,
    table: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """out[n] = sum_j coefs[n, j] * table[indices[n, j]] (+ bias) as C @ T[L]: [N, D] in out_dtype."""
    dtype = _gemm_dtype(coefs, table)
    out = _products(dense_codes(coefs, compaction), table.index_select(0, compaction.latents), dtype, exact_b=True)
    if bias is not None:
        out += bias.float()
    return out.to(out_dtype)


def scatter_rows(
    coefs: torch.Tensor,
    compaction: Compaction,
    rows: torch.Tensor,
    n_out: int,
    out_dtype: torch.dtype,
    dot_table: torch.Tensor | None = None,
    coef_sums: bool = False,
    out: torch.Tensor | None = None,
    accumulate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(out [n_out, D], dots [N, k] fp32 or None, sums [n_out] fp32 or None); see triton.scatter_rows.

    With `accumulate` the products are added into the given `out` (rows not named keep
    their values) instead of overwriting it.
    """
    dtype = _gemm_dtype(coefs, rows)
    codes = dense_codes(coefs, compaction)  # [N, U] fp32
    part = _products(codes.t(), rows, dtype, exact_b=True)  # [U, D] fp32
    if out is None:
        out = torch.zeros(n_out, rows.shape[1], dtype=out_dtype, device=rows.device)
    elif not accumulate:
        out.zero_()
    if accumulate:
        out.index_add_(0, compaction.latents, part.to(out.dtype))
    else:
        out.index_copy_(0, compaction.latents, part.to(out.dtype))
    dots = None
    if dot_table is not None:
        named_rows = dot_table.index_select(0, compaction.latents)  # [U, D]
        products = _products(rows, named_rows.t(), dtype, exact_b=False)  # [N, U]: the kernel rounds T too
        dots = torch.where(compaction.valid, products.gather(1, compaction.local), 0.0)
    sums = None
    if coef_sums:
        sums = torch.zeros(n_out, dtype=torch.float32, device=rows.device)
        sums.index_add_(0, compaction.latents, codes.sum(0))
    return out, dots, sums


def gather_dot(rows: torch.Tensor, compaction: Compaction, table: torch.Tensor) -> torch.Tensor:
    """out[n, j] = <rows[n], table[indices[n, j]]> as (R @ T[L]^T) gathered: [N, k] fp32."""
    dtype = _gemm_dtype(rows, table)
    products = _products(rows, table.index_select(0, compaction.latents).t(), dtype, exact_b=True)
    return torch.where(compaction.valid, products.gather(1, compaction.local), 0.0)
