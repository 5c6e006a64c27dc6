"""Fast TopK encoder (torch.topk selection, Triton sparse backward) against its reference, CPU interpreter.

Selection is checked against the pre-activations the fast path itself computed (k
largest, ascending slots, ReLU / sign / dead-mask rules, AuxK among gathered dead columns),
and against the reference where the top-k is unambiguous. Gradients are compared with the
reference's sparse backward on the same selected slots: dx, dW_enc, db_enc, with AuxK
(also through the dense route that large k_aux takes), and the weight table the forward
hands to the backward.
"""

from __future__ import annotations

import pytest
import torch

from workbench.kernels import sparse_decode, topk_encode, use
from workbench.kernels.encode import op as encode_op
from workbench.kernels.encode import reference
from workbench.kernels.encode import triton as kernels
from workbench.kernels.tuning import force_config

from kernel_checks import assert_close, assert_valid_topk, noncontiguous


def _encoder(n_rows, d_in, n_latents, dtype, generator, transposed_storage=False):
    x = torch.randn(n_rows, d_in, generator=generator).to(dtype)
    if transposed_storage:  # the layout an SAE with nn.Linear-style [d_sae, d_in] weights passes
        W_enc = torch.randn(n_latents, d_in, generator=generator).to(dtype).t()
    else:
        W_enc = torch.randn(d_in, n_latents, generator=generator).to(dtype)
    b_enc = torch.randn(n_latents, generator=generator).to(dtype)
    return x, W_enc, b_enc


def _triton_pre(x, W_enc, b_enc):
    return torch.addmm(b_enc.to(x.dtype), x, W_enc.to(x.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("absolute", [False, True], ids=["topk", "abstopk"])
@pytest.mark.parametrize("n_latents,k", [(37, 1), (37, 37), (300, 24)])
def test_selection_is_an_exact_topk(interpreter, generator, dtype, absolute, n_latents, k):
    pre = torch.randn(5, n_latents, generator=generator).to(dtype)
    vals, idx = kernels.select_topk(pre, k, absolute)
    assert_valid_topk(pre, vals, idx, k, absolute)


@pytest.mark.parametrize("absolute", [False, True], ids=["topk", "abstopk"])
def test_aux_selection_only_among_dead_latents(interpreter, generator, absolute):
    pre = torch.randn(6, 90, generator=generator)
    dead = torch.rand(90, generator=generator) < 0.2
    vals, idx = kernels.select_topk(pre, 8, absolute, mask=dead)
    assert_valid_topk(pre, vals, idx, 8, absolute, mask=dead)
    assert dead[idx].all()
    few = torch.zeros(90, dtype=torch.bool)
    few[[5, 77]] = True  # 2 dead latents, 6 aux slots: the rest take live latents, value 0
    vals, idx = kernels.select_topk(pre, 6, absolute, mask=few)
    assert_valid_topk(pre, vals, idx, 6, absolute, mask=few)
    assert few[idx].sum(dim=1).tolist() == [2] * 6
    most = torch.rand(90, generator=generator) < 0.8  # more than half dead: the masked top-k route
    vals, idx = kernels.select_topk(pre, 8, absolute, mask=most)
    assert_valid_topk(pre, vals, idx, 8, absolute, mask=most)


@pytest.mark.parametrize("absolute", [False, True], ids=["topk", "abstopk"])
@pytest.mark.parametrize("transposed_storage", [False, True], ids=["W[d_in,d_sae]", "W[d_sae,d_in].T"])
def test_encode_fp32_matches_reference_with_gradients(interpreter, generator, absolute, transposed_storage):
    n_rows, d_in, n_latents, k, k_aux = 19, 24, 70, 6, 5
    x, W_enc, b_enc = _encoder(n_rows, d_in, n_latents, torch.float32, generator, transposed_storage)
    dead = torch.rand(n_latents, generator=generator) < 0.25
    grads_out = [torch.randn(n_rows, k, generator=generator), torch.randn(n_rows, k_aux, generator=generator)]
    results = {}
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, W_enc, b_enc)]
        with use(backend):
            vals, idx, aux_vals, aux_idx = topk_encode(*leaves, k, dead_mask=dead, k_aux=k_aux, absolute=absolute)
        torch.autograd.backward((vals, aux_vals), grads_out)
        results[backend] = (vals.detach(), idx, aux_vals.detach(), aux_idx, [leaf.grad for leaf in leaves])
    got, want = results["triton"], results["reference"]
    assert torch.equal(got[1], want[1]) and torch.equal(got[3], want[3]), "selected latents differ"
    assert_close(got[0], want[0], "vals")
    assert_close(got[2], want[2], "aux vals")
    for g, w, name in zip(got[4], want[4], ("dx", "dW_enc", "db_enc")):
        assert_close(g, w, name)
    assert got[4][1].shape == W_enc.shape


def test_encode_bf16_selection_and_backward(interpreter, generator):
    n_rows, d_in, n_latents, k = 23, 40, 130, 9
    x, W_enc, b_enc = _encoder(n_rows, d_in, n_latents, torch.bfloat16, generator)
    dead = torch.rand(n_latents, generator=generator) < 0.3
    with use("triton"):
        vals, idx, aux_vals, aux_idx = topk_encode(x, W_enc, b_enc, k, dead_mask=dead, k_aux=4)
    pre = _triton_pre(x, W_enc, b_enc)
    assert_valid_topk(pre, vals, idx, k, absolute=False)
    assert_valid_topk(pre, aux_vals, aux_idx, 4, absolute=False, mask=dead)
    # Backward on identical slots: the Triton kernels against the reference formulas.
    args = (torch.randn(vals.shape, generator=generator).to(vals.dtype),
            torch.randn(aux_vals.shape, generator=generator).to(aux_vals.dtype),
            vals, idx, aux_vals, aux_idx, dead, False)
    got = kernels.encode_backward(reference.slot_gradient_parts(*args), x, W_enc)
    want = reference.encode_backward(*reference.slot_gradients(*args), x, W_enc)
    for a, b, name in zip(got, want, ("dx", "dW_enc", "db_enc")):
        assert_close(a, b, name)


def test_encode_hot_latents_and_noncontiguous_input(interpreter, generator):
    # Three latents with a huge bias win in every row: long latent segments in the backward.
    n_rows, d_in, n_latents, k = 80, 20, 60, 5
    x, W_enc, b_enc = _encoder(n_rows, d_in, n_latents, torch.float32, generator)
    b_enc[[3, 17, 41]] += 100.0
    x = noncontiguous(x)
    grad = torch.randn(n_rows, k, generator=generator)
    results = {}
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, W_enc, b_enc)]
        with use(backend):
            vals, idx, _, _ = topk_encode(*leaves, k)
        vals.backward(grad)
        results[backend] = (idx, [leaf.grad for leaf in leaves])
    assert (results["triton"][0][:, :3] == torch.tensor([3, 17, 41])).all() or bool(
        torch.isin(torch.tensor([3, 17, 41]), results["triton"][0]).all()
    )
    assert torch.equal(results["triton"][0], results["reference"][0])
    for g, w, name in zip(results["triton"][1], results["reference"][1], ("dx", "dW_enc", "db_enc")):
        assert_close(g, w, name)


def test_large_aux_part_through_the_dense_route(interpreter, generator, monkeypatch):
    # AuxK with k_aux in the hundreds takes decode/dense.py (GEMMs over the dead latents
    # named), added to the main slots' sparse results; here forced at a small k_aux.
    from workbench.kernels.decode import dense

    monkeypatch.setattr(dense, "DENSE_MIN_K", 6)
    monkeypatch.setattr(dense, "GATHER_BYTES_PER_S", 1.0)
    for dtype in (torch.float32, torch.bfloat16):
        n_rows, d_in, n_latents, k, k_aux = 17, 24, 64, 4, 7
        x, W_enc, b_enc = _encoder(n_rows, d_in, n_latents, dtype, generator)
        dead = torch.rand(n_latents, generator=generator) < 0.3
        with use("triton"):
            vals, idx, aux_vals, aux_idx = topk_encode(x, W_enc, b_enc, k, dead_mask=dead, k_aux=k_aux)
        args = (torch.randn(vals.shape, generator=generator).to(dtype), torch.randn(aux_vals.shape, generator=generator).to(dtype),
                vals, idx, aux_vals, aux_idx, dead, False)
        table = kernels.encoder_table(W_enc, dtype)
        got = kernels.encode_backward(reference.slot_gradient_parts(*args), x, W_enc, table)
        want = reference.encode_backward(*reference.slot_gradients(*args), x, W_enc)
        for a, b, name in zip(got, want, ("dx", "dW_enc", "db_enc")):
            # bf16: the dense route rounds its partial sums to bf16 once more than the kernels
            assert_close(a, b, f"{dtype} {name}", rtol=None if dtype == torch.float32 else 3e-2)


def test_encoder_table_is_a_view_or_one_transposing_cast(interpreter, generator):
    W = torch.randn(13, 70, generator=generator)  # [d_in, d_sae]
    table = kernels.encoder_table(W, torch.bfloat16)
    assert table.shape == (70, 13) and table.is_contiguous() and table.dtype == torch.bfloat16
    assert torch.equal(table, W.t().to(torch.bfloat16))  # round to nearest, as torch casts
    strided = W.t().contiguous().t()[:, ::2]  # [13, 35] column-major, every other latent
    assert torch.equal(kernels.transpose_cast(strided, torch.float32), strided.t())
    stored = torch.randn(70, 13, generator=generator)  # nn.Linear-style [d_sae, d_in] storage
    assert kernels.encoder_table(stored.t(), torch.float32).data_ptr() == stored.data_ptr()
    for config in kernels.TRANSPOSE_CAST.candidates:
        with force_config("transpose_cast", config):
            assert torch.equal(kernels.transpose_cast(W, torch.float32), W.t())


def test_encode_opcheck(interpreter, generator):
    x, W_enc, b_enc = _encoder(6, 10, 33, torch.float32, generator)
    dead = torch.rand(33, generator=generator) < 0.3
    for absolute, mask, k_aux in ((False, dead, 4), (True, None, 0)):
        args = (x.requires_grad_(), W_enc.requires_grad_(), b_enc.requires_grad_(), 5, mask, k_aux, absolute)
        results = torch.library.opcheck(encode_op.topk_encode_op, args)
        assert set(results.values()) == {"SUCCESS"}, results
    vals, idx, aux_vals, aux_idx = encode_op.topk_encode_op(x.detach(), W_enc.detach(), b_enc.detach(), 5, dead, 4, False)
    backward_args = (torch.randn_like(vals), torch.randn_like(aux_vals), x.detach(), W_enc.detach(), vals, idx,
                     aux_vals, aux_idx, dead, False, True, True, True)
    results = torch.library.opcheck(encode_op.topk_encode_backward_op, backward_args)
    assert set(results.values()) == {"SUCCESS"}, results


def test_whole_sae_step_compiles_fullgraph(interpreter, generator):
    n_rows, d_in, n_latents, k = 12, 16, 48, 4
    x, W_enc, b_enc = _encoder(n_rows, d_in, n_latents, torch.float32, generator)
    W_dec = torch.randn(n_latents, d_in, generator=generator)
    b_dec = torch.zeros(d_in)

    def loss_fn(x, W_enc, b_enc, W_dec, b_dec):
        vals, idx, _, _ = topk_encode(x - b_dec, W_enc, b_enc, k)
        return (sparse_decode(vals, idx, W_dec, b_dec) - x).pow(2).sum()

    # No FX-graph cache: a graph cached before an op's fake changed would hide the change.
    with torch._inductor.config.patch(fx_graph_cache=False):
        compiled = torch.compile(loss_fn, fullgraph=True)
        params = [t.clone().requires_grad_() for t in (W_enc, b_enc, W_dec, b_dec)]
        loss = compiled(x, *params)
        loss.backward()
    with use("reference"):
        ref_params = [t.clone().requires_grad_() for t in (W_enc, b_enc, W_dec, b_dec)]
        ref_loss = loss_fn(x, *ref_params)
        ref_loss.backward()
    assert_close(loss.detach(), ref_loss.detach(), "loss")
    for got, want, name in zip(params, ref_params, ("W_enc", "b_enc", "W_dec", "b_dec")):
        assert_close(got.grad, want.grad, f"d {name}")


@pytest.mark.parametrize("route", [("chunked", 32), ("filter", 16)], ids=["chunked", "filter"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fast_topk_routes_select_what_torch_topk_selects(interpreter, generator, dtype, route):
    # The routes CUDA may pick after timing (there with chunks of 1024/4096 or 256/128),
    # on rows of 256. Without ties the latents are exactly plain torch.topk's; with ties
    # any valid top-k is allowed here (which tied latents torch keeps differs between CPU
    # and CUDA; on CUDA a route is only used after matching torch.topk on real data).
    from workbench.kernels.encode import select

    pre = torch.randn(6, 256, generator=generator).to(dtype)
    if route[0] == "filter":
        assert select._filtered_topk(pre, 8, route[1]) is not None, "the filter route fell back on plain data"
    plain = pre.topk(8, dim=1).indices.sort(dim=1).values
    tied = pre.clone()
    tied[:, 100:110] = pre.max() + 1
    tied[0, :] = 0.5
    with force_config("topk_route", {"route": route}):
        select._routes.clear()
        vals, idx = select.select_topk(pre, 8, absolute=False)
        tied_vals, tied_idx = select.select_topk(tied, 8, absolute=True)
    select._routes.clear()
    if pre.unique().numel() == pre.numel():
        assert torch.equal(idx, plain)
    assert_valid_topk(pre, vals, idx, 8, absolute=False)
    assert_valid_topk(tied, tied_vals, tied_idx, 8, absolute=True)


def test_filter_route_falls_back_where_its_bound_fails(interpreter, generator):
    # A row of 2048 equal values overflows the 1024 candidate slots; a NaN row has no
    # bound: both calls must come back from torch.topk, still exact.
    from workbench.kernels.encode import select

    pre = torch.randn(3, 2048, generator=generator)
    pre[1] = 0.25
    assert select._filtered_topk(pre, 4, 256) is None
    found = select._filtered_topk(torch.randn(3, 2048, generator=generator), 4, 256)
    assert found is not None and found.shape == (3, 4)
    pre[2, 7] = float("nan")
    with force_config("topk_route", {"route": ("filter", 256)}):
        select._routes.clear()
        vals, idx = select.select_topk(pre, 4, absolute=False)
    select._routes.clear()
    assert torch.equal(idx, pre.topk(4, dim=1, sorted=False).indices.sort(dim=1).values)  # torch.topk's answer


def test_one_token_gradient_gathers_the_weight_columns_in_place(interpreter, generator):
    # 1 row x 3 slots over 200 latents: too few pairs to pay for a transposed copy of
    # W_enc, so dx gathers its strided columns directly; the result is the same.
    x, W_enc, b_enc = _encoder(1, 12, 200, torch.float32, generator)
    grads = {}
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, W_enc, b_enc)]
        with use(backend):
            vals, idx, _, _ = topk_encode(*leaves, 3)
        vals.sum().backward()
        grads[backend] = [leaf.grad for leaf in leaves]
    for got, want, name in zip(grads["triton"], grads["reference"], ("dx", "dW_enc", "db_enc")):
        assert_close(got, want, name)
