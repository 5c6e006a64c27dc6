"""Fast path of the TopK encoder: cuBLAS GEMM, top-k selection (select.py), sparse Triton backward.

Forward. pre = x @ W_enc + b_enc runs in cuBLAS (nothing beats it for a dense GEMM), in
x's dtype with fp32 accumulation; `select.py` picks the top k per row (torch.topk or a
faster exact form chosen by timing on first use) and AuxK's top k_aux among the dead
latents.

The GEMM is the very call a dense implementation under autocast makes (the weights cast
to x's dtype, [d_in, d_sae] as stored), so the pre-activations, and the selection near
ties, agree bit for bit with a plain `x @ W_enc + b_enc` at b_enc = 0: callers that check
a kernel against their own torch version on first use (workbench.sae does) see the same
latents. (Multiplying by a transposed [d_sae, d_in] copy instead would save one weight
cast per step but lets cuBLAS pick another kernel and round differently.)

Backward (see reference.py for the formulas): dx is a gather-sum over the rows of a
"table", the encoder weights as a contiguous [d_sae, d_in] tensor in the slot gradients'
dtype (`encoder_table`: a transposed view when W_enc already is one, else one transposing
cast, `_transpose_cast_kernel`, which reads W_enc once and writes coalesced), dW_enc
and db_enc one latent-sorted scatter pass writing latent rows straight into a contiguous
[d_in, d_sae] gradient (`decode.triton.gather_sum` / `scatter_rows`). AuxK's slots are
handled as a second part: with k_aux in the hundreds they go to the dense route of
`decode/dense.py` (GEMMs over the dead latents named) and are added in.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workbench.kernels import _interpreter
from workbench.kernels.decode import dense
from workbench.kernels.decode.triton import gather_sum, scatter_rows
from workbench.kernels.encode import reference
from workbench.kernels.encode.select import select_topk
from workbench.kernels.tuning import Tuner, launch_args

_interpreter.install()


@triton.jit
def _transpose_cast_kernel(
    src_ptr, dst_ptr, R, C, stride_sr, stride_sc,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # src [R, C] (any strides) -> dst [C, R] contiguous, in dst's dtype. The tile is loaded
    # along src's rows and stored along dst's rows (the compiler swaps the layout through
    # shared memory), so both sides are coalesced.
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (r[:, None] < R) & (c[None, :] < C)
    r64 = r.to(tl.int64)
    c64 = c.to(tl.int64)
    tile = tl.load(src_ptr + r64[:, None] * stride_sr + c64[None, :] * stride_sc, mask=ok, other=0.0)
    tl.store(dst_ptr + c64[None, :] * R + r64[:, None], tile.to(dst_ptr.dtype.element_ty), mask=ok)


TRANSPOSE_CAST = Tuner("transpose_cast", [
    dict(BLOCK_R=64, BLOCK_C=64, num_warps=4),
    dict(BLOCK_R=32, BLOCK_C=128, num_warps=4),
    dict(BLOCK_R=128, BLOCK_C=64, num_warps=8),
])


def transpose_cast(src: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new contiguous [C, R] tensor in `dtype` holding src.T, for src [R, C] of any strides."""
    n_r, n_c = src.shape
    dst = torch.empty(n_c, n_r, dtype=dtype, device=src.device)
    if dst.numel() == 0:
        return dst

    def launch(config: dict):
        meta, options = launch_args(config)
        grid = (triton.cdiv(n_r, meta["BLOCK_R"]), triton.cdiv(n_c, meta["BLOCK_C"]))
        _transpose_cast_kernel[grid](src, dst, n_r, n_c, src.stride(0), src.stride(1), **meta, **options)

    key = (n_r, n_c, src.dtype, dtype)
    launch(TRANSPOSE_CAST.pick(key, src.device, launch, outputs=lambda: (dst,)))
    return dst


def encoder_table(W_enc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The encoder weights as a contiguous [d_sae, d_in] tensor in `dtype` (a view when possible).

    W_enc [d_in, d_sae]; row l of the result is latent l's encoder direction. No gradient
    flows through it (the op's backward computes dW_enc itself).
    """
    table = W_enc.detach().t()
    if table.dtype == dtype and table.is_contiguous():
        return table
    return transpose_cast(W_enc.detach(), dtype)


def encode_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead_mask: torch.Tensor | None,
    k_aux: int,
    absolute: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twin of reference.encode_forward: (vals, idx, aux_vals, aux_idx)."""
    pre = torch.addmm(b_enc.to(x.dtype), x, W_enc.to(x.dtype))  # [N, d_sae], fp32 accumulation
    vals, idx = select_topk(pre, k, absolute)
    if k_aux > 0 and dead_mask is not None:
        aux_vals, aux_idx = select_topk(pre, k_aux, absolute, mask=dead_mask)
    else:
        aux_vals, aux_idx = reference.select_topk(pre, 0, absolute)
    return vals, idx, aux_vals, aux_idx


def encode_backward(
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    W_enc: torch.Tensor,
    table: torch.Tensor | None = None,
    need_x: bool = True,
    need_weight: bool = True,
    need_bias: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dW_enc [d_in, d_sae], db_enc [d_sae] fp32) from the slot gradients.

    `parts` is [(g, latents)] or [(g, latents), (g_aux, aux_latents)] ([N, k] each, from
    reference.slot_gradient_parts); the result equals reference.encode_backward on the
    concatenated slots. `table` is `encoder_table(W_enc, dtype of g)` (built here if None).
    """
    d_in, d_sae = W_enc.shape
    if len(parts) == 2 and parts[1][0].shape[1] < dense.DENSE_MIN_K:
        parts = [(torch.cat([parts[0][0], parts[1][0]], 1), torch.cat([parts[0][1], parts[1][1]], 1))]
    dx = d_weight = d_bias = None
    if need_x:
        n_pairs = sum(g.numel() for g, _ in parts)
        if table is None and 8 * n_pairs <= d_sae:
            table = W_enc.t()  # a few pairs (one-token gradients): gather the strided columns directly
        elif table is None:
            # One transposed copy beats a strided gather (a 32-byte sector per element).
            # Half-precision slot gradients get a table in their dtype, as autocast casts
            # the weight of a dense bf16 backward.
            g_dtype = parts[0][0].dtype
            table = encoder_table(W_enc, g_dtype if g_dtype in (torch.bfloat16, torch.float16) else W_enc.dtype)
        if len(parts) == 1:
            dx = gather_sum(parts[0][0], parts[0][1], table, out_dtype=x.dtype)
        else:
            dx = sum(gather_sum(g, latents, table, out_dtype=torch.float32) for g, latents in parts).to(x.dtype)
    if need_weight:
        # Always a contiguous [d_in, d_sae] (the SAELens layout of W_enc, so autograd
        # accumulates it without a copy); the kernel writes latent rows through its
        # transposed view. (Output strides may not follow the input's: under torch.compile
        # the traced and the real W_enc can differ in layout.)
        # Two parts with half-precision weights: sum them in fp32 and round once.
        dtype = torch.float32 if len(parts) > 1 and W_enc.dtype != torch.float32 else W_enc.dtype
        d_weight = torch.empty(d_in, d_sae, dtype=dtype, device=W_enc.device)
        for number, (g, latents) in enumerate(parts):
            _, _, sums = scatter_rows(
                g, latents, x, d_sae, dtype, coef_sums=need_bias, skip_zero=True,
                out=d_weight.t(), accumulate=number > 0,
            )
            if need_bias:
                d_bias = sums if d_bias is None else d_bias + sums
        d_weight = d_weight.to(W_enc.dtype)
    elif need_bias:
        d_bias = torch.zeros(d_sae, dtype=torch.float32, device=x.device)
        for g, latents in parts:
            d_bias.index_add_(0, latents.reshape(-1).long(), g.reshape(-1).float())
    return dx, d_weight, d_bias
