"""Autograd wiring of the TopK encoder, for both backends.

- `ReferenceTopKEncode`: a torch.autograd.Function over `reference.py`.
- `workbench::topk_encode` (+ `workbench::topk_encode_backward`): torch.library custom ops
  over the fast path (cuBLAS GEMM + torch.topk forward; Triton gather and latent-sorted
  scatter backward), with `register_fake` and `register_autograd`.

Both save only the selected slots (values and indices), never the [N, d_sae]
pre-activations, and their backward never builds a dense [N, d_sae] gradient.
Importing this module registers the ops (cheap: triton is not imported; the op bodies
import the Triton module on first use).
"""

from __future__ import annotations

from typing import Optional

import torch

from workbench.kernels.encode import reference


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


class ReferenceTopKEncode(torch.autograd.Function):
    """(vals, idx, aux_vals, aux_idx) = topk_encode(...) by the plain-torch spec, with its sparse backward."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k, dead_mask, k_aux, absolute):
        vals, idx, aux_vals, aux_idx = reference.encode_forward(x, W_enc, b_enc, k, dead_mask, k_aux, absolute)
        ctx.save_for_backward(x, W_enc, vals, idx, aux_vals, aux_idx, dead_mask)
        ctx.absolute, ctx.bias_dtype = absolute, b_enc.dtype
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, grad_vals, grad_idx, grad_aux_vals, grad_aux_idx):
        x, W_enc, vals, idx, aux_vals, aux_idx, dead_mask = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        g, latents = reference.slot_gradients(
            _zeros_if_none(grad_vals, vals), _zeros_if_none(grad_aux_vals, aux_vals),
            vals, idx, aux_vals, aux_idx, dead_mask, ctx.absolute,
        )
        dx, d_weight, d_bias = reference.encode_backward(g, latents, x, W_enc, need_x, need_weight, need_bias)
        d_bias = None if d_bias is None else d_bias.to(ctx.bias_dtype)
        return dx, d_weight, d_bias, None, None, None, None


@torch.library.custom_op("workbench::topk_encode", mutates_args=())
def topk_encode_op(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead_mask: Optional[torch.Tensor],
    k_aux: int,
    absolute: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast TopK encode: (vals [N, k], idx [N, k] int64, aux_vals [N, k_aux], aux_idx [N, k_aux] int64)."""
    from workbench.kernels.encode import triton as kernels

    return kernels.encode_forward(x, W_enc, b_enc, k, dead_mask, k_aux, absolute)


@topk_encode_op.register_fake
def _topk_encode_fake(x, W_enc, b_enc, k, dead_mask, k_aux, absolute):
    n_rows = x.shape[0]
    k_aux = k_aux if dead_mask is not None else 0
    return (
        x.new_empty((n_rows, k)),
        x.new_empty((n_rows, k), dtype=torch.long),
        x.new_empty((n_rows, k_aux)),
        x.new_empty((n_rows, k_aux), dtype=torch.long),
    )


@torch.library.custom_op("workbench::topk_encode_backward", mutates_args=())
def topk_encode_backward_op(
    grad_vals: torch.Tensor,
    grad_aux_vals: torch.Tensor,
    x: torch.Tensor,
    W_enc: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    aux_vals: torch.Tensor,
    aux_idx: torch.Tensor,
    dead_mask: Optional[torch.Tensor],
    absolute: bool,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx [N, d_in], dW_enc [d_in, d_sae], db_enc [d_sae] fp32) by the Triton kernels; [0] where not needed."""
    from workbench.kernels.encode import triton as kernels

    parts = reference.slot_gradient_parts(grad_vals, grad_aux_vals, vals, idx, aux_vals, aux_idx, dead_mask, absolute)
    dx, d_weight, d_bias = kernels.encode_backward(parts, x, W_enc, None, need_x, need_weight, need_bias)
    return (
        dx if dx is not None else x.new_empty((0,)),
        d_weight if d_weight is not None else W_enc.new_empty((0,)),
        d_bias if d_bias is not None else x.new_empty((0,), dtype=torch.float32),
    )


@topk_encode_backward_op.register_fake
def _topk_encode_backward_fake(
    grad_vals, grad_aux_vals, x, W_enc, vals, idx, aux_vals, aux_idx, dead_mask, absolute, need_x, need_weight, need_bias
):
    d_in, d_sae = W_enc.shape
    dx = x.new_empty(x.shape) if need_x else x.new_empty((0,))
    d_weight = W_enc.new_empty((d_in, d_sae)) if need_weight else W_enc.new_empty((0,))
    d_bias = x.new_empty((d_sae,), dtype=torch.float32) if need_bias else x.new_empty((0,), dtype=torch.float32)
    return dx, d_weight, d_bias


def _setup_context(ctx, inputs, output):
    x, W_enc, b_enc, k, dead_mask, k_aux, absolute = inputs
    vals, idx, aux_vals, aux_idx = output
    ctx.save_for_backward(x, W_enc, vals, idx, aux_vals, aux_idx, dead_mask)
    ctx.absolute, ctx.bias_dtype = absolute, b_enc.dtype


def _backward(ctx, grad_vals, grad_idx, grad_aux_vals, grad_aux_idx):
    x, W_enc, vals, idx, aux_vals, aux_idx, dead_mask = ctx.saved_tensors
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    if not (need_x or need_weight or need_bias):
        return None, None, None, None, None, None, None
    dx, d_weight, d_bias = torch.ops.workbench.topk_encode_backward(
        _zeros_if_none(grad_vals, vals), _zeros_if_none(grad_aux_vals, aux_vals),
        x, W_enc, vals, idx, aux_vals, aux_idx, dead_mask, ctx.absolute, need_x, need_weight, need_bias,
    )
    return (
        dx if need_x else None,
        d_weight if need_weight else None,
        d_bias.to(ctx.bias_dtype) if need_bias else None,
        None, None, None, None,
    )


topk_encode_op.register_autograd(_backward, setup_context=_setup_context)

