"""Ragged codes (BatchTopK, JumpReLU, Matryoshka: a variable number of latents per token)
through the sparse-decode kernels: the padding, and outputs and gradients against the
dense route, under the CPU interpreter."""

from __future__ import annotations

import pytest
import torch

from workbench.sae.sparse_ops import dense_ragged_decode, kernel_ragged_decode, padded_codes

from kernel_checks import assert_close


def _entries(generator, n_rows=9, n_latents=40, counts=(0, 1, 5, 2, 0, 7, 3, 3, 1)):
    """Entries with rows ascending, distinct latents within a row, and empty rows."""
    rows, cols = [], []
    for row, count in zip(range(n_rows), counts):
        rows += [row] * count
        cols += torch.randperm(n_latents, generator=generator)[:count].tolist()
    vals = torch.rand(len(rows), generator=generator) + 0.1
    return torch.tensor(rows), torch.tensor(cols), vals


def test_padding_keeps_each_row_first_and_points_the_rest_out_of_range(generator):
    rows, cols, vals = _entries(generator)
    vals.requires_grad_()
    acts, indices = padded_codes(rows, cols, vals, 9, 40)
    assert acts.shape == indices.shape == (9, 32)  # the longest row has 7 entries: rounded up to 32
    start = 0
    for row, count in enumerate((0, 1, 5, 2, 0, 7, 3, 3, 1)):
        assert torch.equal(indices[row, :count], cols[start:start + count])
        assert torch.equal(acts[row, :count].detach(), vals[start:start + count].detach())
        assert (indices[row, count:] == 40).all() and not acts[row, count:].any()
        start += count
    acts.sum().backward()
    assert torch.equal(vals.grad, torch.ones_like(vals))  # the graph reaches the entries


@pytest.mark.parametrize("vals_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_kernel_route_matches_the_dense_route(interpreter, generator, vals_dtype, bias):
    rows, cols, vals = _entries(generator)
    W = torch.randn(40, 70, generator=generator)  # fp32 weights, as under autocast
    b = torch.randn(70, generator=generator) if bias else None
    grad_y = torch.randn(9, 70, generator=generator)
    results = []
    for decode in (kernel_ragged_decode, dense_ragged_decode):
        leaves = [vals.to(vals_dtype).clone().requires_grad_(), W.clone().requires_grad_()]
        leaves += [b.clone().requires_grad_()] if bias else []
        y = decode(rows, cols, leaves[0], 9, leaves[1], leaves[2] if bias else None)
        y.float().backward(grad_y)
        results.append([y.detach().float()] + [leaf.grad.float() for leaf in leaves])
    for got, want, name in zip(*results, ("y", "d vals", "d W_dec", "d b_dec")):
        assert_close(got, want, f"{vals_dtype} {name}")
