"""Autograd wiring of sparse decode, for both backends.

- `ReferenceDecode`: a torch.autograd.Function over `reference.py` (forward and backward).
- `workbench::sparse_decode` (+ `workbench::sparse_decode_backward`): torch.library custom
  ops over the Triton kernels, with `register_fake` (shapes for FakeTensor / torch.compile)
  and `register_autograd`, so `torch.library.opcheck` and `torch.compile` work. The Triton
  module is imported inside the op bodies, on first use.

Importing this module registers the two ops (cheap: triton is not imported; the op
bodies import the Triton module on first use).
"""

from __future__ import annotations

from typing import Optional

import torch

from workbench.kernels.decode import reference


class ReferenceDecode(torch.autograd.Function):
    """y = sparse_decode(acts, indices, W_dec, b_dec) by the plain-torch spec, with its sparse backward."""

    @staticmethod
    def forward(ctx, acts, indices, W_dec, b_dec):
        ctx.save_for_backward(acts, indices, W_dec)
        ctx.bias_dtype = None if b_dec is None else b_dec.dtype
        return reference.decode_forward(acts, indices, W_dec, b_dec)

    @staticmethod
    def backward(ctx, grad_y):
        acts, indices, W_dec = ctx.saved_tensors
        need_acts, _, need_weight, need_bias = ctx.needs_input_grad
        d_acts, d_weight = reference.decode_backward(grad_y, acts, indices, W_dec, need_acts, need_weight)
        d_bias = grad_y.float().sum(0).to(ctx.bias_dtype) if need_bias else None
        return d_acts, None, d_weight, d_bias


@torch.library.custom_op("workbench::sparse_decode", mutates_args=())
def sparse_decode_op(
    acts: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: Optional[torch.Tensor]
) -> torch.Tensor:
    """Triton sparse decode: [N, k], [N, k], [d_sae, d_out], [d_out]? -> [N, d_out] in acts' dtype."""
    from workbench.kernels.decode import triton as kernels

    return kernels.decode_forward(acts, indices, W_dec, b_dec)


@sparse_decode_op.register_fake
def _sparse_decode_fake(acts, indices, W_dec, b_dec):
    return acts.new_empty((acts.shape[0], W_dec.shape[1]))


@torch.library.custom_op("workbench::sparse_decode_backward", mutates_args=())
def sparse_decode_backward_op(
    grad_y: torch.Tensor,
    acts: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    need_acts: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_acts [N, k], d_W_dec [d_sae, d_out]) by the Triton kernels; an empty [0] tensor where not needed."""
    from workbench.kernels.decode import triton as kernels

    d_acts, d_weight = kernels.decode_backward(grad_y, acts, indices, W_dec, need_acts, need_weight)
    return (
        d_acts if d_acts is not None else acts.new_empty((0,)),
        d_weight if d_weight is not None else W_dec.new_empty((0,)),
    )


@sparse_decode_backward_op.register_fake
def _sparse_decode_backward_fake(grad_y, acts, indices, W_dec, need_acts, need_weight):
    d_acts = acts.new_empty(acts.shape) if need_acts else acts.new_empty((0,))
    d_weight = W_dec.new_empty(W_dec.shape) if need_weight else W_dec.new_empty((0,))
    return d_acts, d_weight


def _setup_context(ctx, inputs, output):
    acts, indices, W_dec, b_dec = inputs
    ctx.save_for_backward(acts, indices, W_dec)
    ctx.bias_dtype = None if b_dec is None else b_dec.dtype


def _backward(ctx, grad_y):
    acts, indices, W_dec = ctx.saved_tensors
    need_acts, _, need_weight, need_bias = ctx.needs_input_grad
    d_acts = d_weight = d_bias = None
    if need_acts or need_weight:
        d_acts, d_weight = torch.ops.workbench.sparse_decode_backward(grad_y, acts, indices, W_dec, need_acts, need_weight)
    if need_bias:
        d_bias = grad_y.float().sum(0).to(ctx.bias_dtype)
    return (d_acts if need_acts else None), None, (d_weight if need_weight else None), d_bias


sparse_decode_op.register_autograd(_backward, setup_context=_setup_context)
