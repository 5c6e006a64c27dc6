"""The plain-torch references are the spec: check them against dense formulas and gradcheck."""

from __future__ import annotations

import pytest
import torch

from workbench.kernels import sparse_decode, topk_encode, use

from kernel_checks import make_indices


def _dense_codes(acts: torch.Tensor, idx: torch.Tensor, n_latents: int) -> torch.Tensor:
    return torch.zeros(acts.shape[0], n_latents, dtype=acts.dtype).scatter_add(1, idx, acts)


@pytest.mark.parametrize("kind", ["unique", "skewed"])
def test_reference_decode_equals_the_dense_product(kind, generator):
    n_rows, k, n_latents, width = 9, 4, 23, 11
    acts = torch.randn(n_rows, k, generator=generator, dtype=torch.float64)
    idx = make_indices(n_rows, k, n_latents, kind, generator)
    W = torch.randn(n_latents, width, generator=generator, dtype=torch.float64)
    b = torch.randn(width, generator=generator, dtype=torch.float64)
    with use("reference"):
        y = sparse_decode(acts, idx, W, b)
    torch.testing.assert_close(y, _dense_codes(acts, idx, n_latents) @ W + b)


def test_reference_decode_gradcheck(generator):
    n_rows, k, n_latents, width = 5, 3, 11, 7
    acts = torch.randn(n_rows, k, generator=generator, dtype=torch.float64, requires_grad=True)
    idx = make_indices(n_rows, k, n_latents, "skewed", generator)
    W = torch.randn(n_latents, width, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(width, generator=generator, dtype=torch.float64, requires_grad=True)
    with use("reference"):
        assert torch.autograd.gradcheck(lambda a, w, bb: sparse_decode(a, idx, w, bb), (acts, W, b))


def test_reference_decode_keeps_fp32_sums_for_bf16_inputs(generator):
    # Many small terms: a bf16 running sum would lose them; the spec sums in fp32.
    n_rows, k, n_latents, width = 2, 256, 300, 3
    acts = torch.full((n_rows, k), 1.0, dtype=torch.bfloat16)
    idx = make_indices(n_rows, k, n_latents, "unique", generator)
    W = torch.full((n_latents, width), 1.0 / 64, dtype=torch.bfloat16)
    with use("reference"):
        y = sparse_decode(acts, idx, W)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, torch.full((n_rows, width), 4.0, dtype=torch.bfloat16))


def _dense_topk_encode(x, W_enc, b_enc, idx, aux_idx, dead, absolute):
    """The same function through dense autograd, given the selected slots."""
    pre = x @ W_enc + b_enc
    vals = pre.gather(1, idx)
    aux = pre.gather(1, aux_idx)
    if not absolute:
        vals, aux = vals.relu(), aux.relu()
    aux = torch.where(dead[aux_idx], aux, torch.zeros_like(aux))
    return vals, aux


@pytest.mark.parametrize("absolute", [False, True])
def test_reference_topk_encode_matches_dense_autograd(absolute, generator):
    n_rows, d_in, n_latents, k, k_aux = 7, 6, 19, 4, 3
    x = torch.randn(n_rows, d_in, generator=generator, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(d_in, n_latents, generator=generator, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(n_latents, generator=generator, dtype=torch.float64, requires_grad=True)
    dead = torch.rand(n_latents, generator=generator) < 0.3
    with use("reference"):
        vals, idx, aux_vals, aux_idx = topk_encode(x, W_enc, b_enc, k, dead_mask=dead, k_aux=k_aux, absolute=absolute)
    # Selection: the k largest (|pre| for AbsTopK), ascending latent order; aux only among dead.
    pre = (x @ W_enc + b_enc).detach()
    key = pre.abs() if absolute else pre
    assert torch.equal(idx, key.topk(k, dim=1).indices.sort(dim=1).values)
    dead_key = key.masked_fill(~dead, float("-inf"))
    n_dead = int(dead.sum())
    if n_dead >= k_aux:
        assert torch.equal(aux_idx, dead_key.topk(k_aux, dim=1).indices.sort(dim=1).values)
    expected_vals, expected_aux = _dense_topk_encode(x, W_enc, b_enc, idx, aux_idx, dead, absolute)
    torch.testing.assert_close(vals, expected_vals)
    torch.testing.assert_close(aux_vals, expected_aux)
    # Backward: the sparse formulas give what dense autograd gives.
    grad_vals = torch.randn(vals.shape, generator=generator, dtype=torch.float64)
    grad_aux = torch.randn(aux_vals.shape, generator=generator, dtype=torch.float64)
    sparse = torch.autograd.grad((vals, aux_vals), (x, W_enc, b_enc), (grad_vals, grad_aux))
    dense = torch.autograd.grad((expected_vals, expected_aux), (x, W_enc, b_enc), (grad_vals, grad_aux))
    for got, want, name in zip(sparse, dense, ("dx", "dW_enc", "db_enc")):
        torch.testing.assert_close(got, want, msg=name)


def test_reference_topk_encode_gradcheck(generator):
    n_rows, d_in, n_latents = 4, 5, 9
    x = torch.randn(n_rows, d_in, generator=generator, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(d_in, n_latents, generator=generator, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(n_latents, generator=generator, dtype=torch.float64, requires_grad=True)
    dead = torch.zeros(n_latents, dtype=torch.bool)
    dead[::2] = True

    def encode(x, W_enc, b_enc):
        vals, _, aux_vals, _ = topk_encode(x, W_enc, b_enc, 3, dead_mask=dead, k_aux=2)
        return vals, aux_vals

    with use("reference"):
        assert torch.autograd.gradcheck(encode, (x, W_enc, b_enc))


def test_aux_slots_beyond_the_dead_latents_carry_zero_and_no_gradient(generator):
    n_rows, d_in, n_latents = 3, 4, 10
    x = torch.randn(n_rows, d_in, generator=generator, requires_grad=True)
    W_enc = torch.randn(d_in, n_latents, generator=generator, requires_grad=True)
    b_enc = torch.zeros(n_latents)
    dead = torch.zeros(n_latents, dtype=torch.bool)
    dead[7] = True  # one dead latent, four aux slots
    with use("reference"):
        _, _, aux_vals, aux_idx = topk_encode(x, W_enc, b_enc, 2, dead_mask=dead, k_aux=4, absolute=True)
    live_slots = ~dead[aux_idx]
    assert live_slots.sum(dim=1).tolist() == [3, 3, 3]
    assert (aux_vals[live_slots] == 0).all()
    (aux_vals * 5).sum().backward()
    assert torch.count_nonzero(W_enc.grad[:, [i for i in range(n_latents) if i != 7]]) == 0
