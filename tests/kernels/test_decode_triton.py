"""Triton sparse decode against its reference, under the CPU interpreter (small shapes).

Every check compares outputs and all three gradients (acts, W_dec, b_dec) with the
reference on the same inputs: k=1 and k=d_sae, widths that are not powers of two, fp32 and
bf16 (and fp32 weights under bf16 codes, the autocast layout), non-contiguous inputs, and
unique, sorted and heavily skewed index distributions.
"""

from __future__ import annotations

import pytest
import torch

from workbench.kernels import sparse_decode, use
from workbench.kernels.decode import op as decode_op
from workbench.kernels.decode import reference
from workbench.kernels.tuning import force_config

from kernel_checks import assert_close, make_indices, noncontiguous

# (N, k, d_sae, d_out): one row; k=1; k=d_sae; several row tiles and column blocks with
# ragged edges (d_out 130 > 128, d_sae 97 = 6 groups of 16 + 1).
SHAPES = [(1, 5, 37, 19), (13, 1, 50, 33), (9, 7, 7, 18), (33, 5, 97, 130)]


def _inputs(n_rows, k, n_latents, width, kind, dtype, weight_dtype, generator, bias=True):
    acts = torch.randn(n_rows, k, generator=generator).to(dtype)
    idx = make_indices(n_rows, k, n_latents, kind, generator)
    W = torch.randn(n_latents, width, generator=generator).to(weight_dtype)
    b = torch.randn(width, generator=generator).to(weight_dtype) if bias else None
    grad_y = torch.randn(n_rows, width, generator=generator).to(dtype)
    return acts, idx, W, b, grad_y


def _run(backend, acts, idx, W, b, grad_y):
    leaves = [t.detach().clone().requires_grad_() for t in (acts, W) + ((b,) if b is not None else ())]
    with use(backend):
        y = sparse_decode(leaves[0], idx, leaves[1], leaves[2] if b is not None else None)
    y.backward(grad_y)
    return y.detach(), [leaf.grad for leaf in leaves]


def _compare(acts, idx, W, b, grad_y, what):
    y, grads = _run("triton", acts, idx, W, b, grad_y)
    y_ref, grads_ref = _run("reference", acts, idx, W, b, grad_y)
    assert_close(y, y_ref, f"{what}: y")
    if acts.dtype != W.dtype:
        # Documented: with half codes the d acts dot products use the weights rounded to the
        # codes' dtype (as autocast would round them); the rest of the math is the same.
        grads_ref[0] = reference.gather_dot(grad_y, idx, W.to(acts.dtype)).to(acts.dtype)
    assert_close(grads[0], grads_ref[0], f"{what}: d acts")
    for got, want, name in zip(grads[1:], grads_ref[1:], ("d W_dec", "d b_dec")):
        assert_close(got, want, f"{what}: {name}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-k{}-M{}-D{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_matches_reference(interpreter, generator, shape, dtype):
    kind = "unique" if shape[1] <= shape[2] else "skewed"
    _compare(*_inputs(*shape, kind, dtype, dtype, generator), f"{shape} {dtype}")


@pytest.mark.parametrize("kind", ["sorted", "skewed"])
def test_decode_index_distributions(interpreter, generator, kind):
    # 'skewed': three latents named by all 70 rows: segments longer than one pair block.
    _compare(*_inputs(70, 6, 41, 24, kind, torch.float32, torch.float32, generator), kind)


def test_decode_fp32_weights_under_bf16_codes(interpreter, generator):
    acts, idx, W, b, grad_y = _inputs(21, 6, 45, 40, "unique", torch.bfloat16, torch.float32, generator)
    _compare(acts, idx, W, b, grad_y, "bf16 codes, fp32 weights")
    with use("triton"):
        assert sparse_decode(acts, idx, W, b).dtype == torch.bfloat16


def test_decode_noncontiguous_inputs(interpreter, generator):
    acts, idx, W, b, grad_y = _inputs(17, 4, 29, 21, "unique", torch.float32, torch.float32, generator)
    W_strided = W.t().contiguous().t()  # column-major weights
    _compare(noncontiguous(acts), noncontiguous(idx), W_strided, b, noncontiguous(grad_y), "strided")


def test_decode_without_bias_and_zero_codes(interpreter, generator):
    acts, idx, W, _, grad_y = _inputs(8, 5, 30, 12, "unique", torch.float32, torch.float32, generator, bias=False)
    acts[:, 1] = 0.0  # zero codes skip their row load but still get a gradient
    _compare(acts, idx, W, None, grad_y, "no bias, zero codes")


def test_decode_no_grad_lean_path_equals_the_op(interpreter, generator):
    acts, idx, W, b, _ = _inputs(6, 3, 20, 9, "unique", torch.float32, torch.float32, generator)
    with torch.no_grad():
        lean = sparse_decode(acts, idx, W, b)
    through_op = decode_op.sparse_decode_op(acts, idx, W, b)
    assert torch.equal(lean, through_op)
    assert_close(lean, reference.decode_forward(acts, idx, W, b), "lean path")


def test_decode_int32_indices(interpreter, generator):
    acts, idx, W, b, grad_y = _inputs(10, 4, 26, 15, "unique", torch.float32, torch.float32, generator)
    y32, _ = _run("triton", acts, idx.int(), W, b, grad_y)
    y64, _ = _run("triton", acts, idx, W, b, grad_y)
    assert torch.equal(y32, y64)


@pytest.mark.parametrize("tuner_name", ["gather_slots", "gather_tiles_small", "gather_tiles_large", "scatter_rows", "gather_dot"])
def test_decode_every_launch_config(interpreter, generator, tuner_name):
    from workbench.kernels.decode import triton as kernels

    tuner = {t.name: t for t in (kernels.GATHER_SLOTS, kernels.GATHER_TILES_SMALL, kernels.GATHER_TILES_LARGE,
                                 kernels.SCATTER_ROWS, kernels.GATHER_DOT)}[tuner_name]
    # Row counts that reach each kernel; 300 rows make dozens of tiles, so the persistent
    # grid (2 x per_sm programs under the interpreter) walks several items per program.
    n_rows = {"gather_slots": 2, "gather_tiles_small": 40}.get(tuner_name, 300)
    acts, idx, W, b, grad_y = _inputs(n_rows, 3, 70, 140, "skewed", torch.bfloat16, torch.bfloat16, generator)
    for config in tuner.candidates:
        with force_config(tuner_name, config):
            if tuner_name == "gather_dot":  # d acts alone: W_dec frozen
                frozen = W.detach()
                codes = acts.detach().clone().requires_grad_()
                with use("triton"):
                    sparse_decode(codes, idx, frozen, b).backward(grad_y)
                with use("reference"):
                    expected = reference.decode_backward(grad_y, acts, idx, W, True, False)[0]
                assert_close(codes.grad, expected, f"{config}: d acts")
            else:
                _compare(acts, idx, W, b, grad_y, str(config))


def test_decode_opcheck(interpreter, generator):
    acts, idx, W, b, grad_y = _inputs(5, 3, 19, 17, "unique", torch.float32, torch.float32, generator)
    args = (acts.requires_grad_(), idx, W.requires_grad_(), b.requires_grad_())
    for sample in (args, args[:3] + (None,)):
        results = torch.library.opcheck(decode_op.sparse_decode_op, sample)
        assert set(results.values()) == {"SUCCESS"}, results
    results = torch.library.opcheck(decode_op.sparse_decode_backward_op, (grad_y, acts.detach(), idx, W.detach(), True, True))
    assert set(results.values()) == {"SUCCESS"}, results


def test_decode_compiles_fullgraph(interpreter, generator):
    acts, idx, W, b, grad_y = _inputs(7, 3, 22, 10, "unique", torch.float32, torch.float32, generator)
    # No FX-graph cache: a graph cached before an op's fake changed would hide the change.
    with torch._inductor.config.patch(fx_graph_cache=False):
        compiled = torch.compile(sparse_decode, fullgraph=True)
        leaves = [t.clone().requires_grad_() for t in (acts, W, b)]
        y = compiled(leaves[0], idx, leaves[1], leaves[2])
        y.backward(grad_y)
    y_ref, grads_ref = _run("reference", acts, idx, W, b, grad_y)
    assert_close(y.detach(), y_ref, "compiled y")
    for leaf, want, name in zip(leaves, grads_ref, ("d acts", "d W_dec", "d b_dec")):
        assert_close(leaf.grad, want, f"compiled {name}")


@pytest.fixture
def dense_route(monkeypatch):
    """Send every call through decode/dense.py (GEMMs over the named latents), whatever k."""
    from workbench.kernels.decode import dense

    monkeypatch.setattr(dense, "DENSE_MIN_K", 1)
    monkeypatch.setattr(dense, "GATHER_BYTES_PER_S", 1.0)  # gathers "cost" forever: dense always wins
    return dense


@pytest.mark.parametrize("codes,kind", [(torch.float32, "unique"), (torch.float32, "skewed"), (torch.bfloat16, "unique")],
                         ids=["fp32-unique", "fp32-skewed", "bf16-unique"])
def test_decode_dense_route_matches_reference(interpreter, generator, dense_route, codes, kind):
    # fp32 weights under fp32 or bf16 codes (the AuxK layout under autocast); skewed rows
    # repeat latents within a row, summed in the dense codes. (With bf16 codes such a sum is
    # rounded to bf16 once before the GEMM, documented in dense.py; TopK and AuxK rows never
    # repeat a latent.)
    _compare(*_inputs(23, 9, 40, 21, kind, codes, torch.float32, generator), f"dense route {codes} {kind}")


def test_decode_dense_route_d_acts_alone_and_bad_indices(interpreter, generator, dense_route):
    acts, idx, W, b, grad_y = _inputs(12, 7, 30, 16, "unique", torch.float32, torch.float32, generator)
    codes = acts.clone().requires_grad_()
    with use("triton"):
        sparse_decode(codes, idx, W, b).backward(grad_y)
    expected = reference.decode_backward(grad_y, acts, idx, W, True, False)[0]
    assert_close(codes.grad, expected, "dense route d acts")
    # Out-of-range ids (possible on CUDA, where they are not checked) contribute nothing.
    from workbench.kernels.decode import triton as kernels

    bad = idx.clone()
    bad[0, 0], bad[3, 2] = -1, 30
    kept = torch.where((bad >= 0) & (bad < 30), acts, 0.0)
    assert_close(kernels.gather_sum(acts, bad, W), reference.gather_sum(kept, bad.clamp(0, 29), W), "invalid ids")


def test_dense_route_is_not_weighed_when_the_gather_is_cheap(monkeypatch):
    """`choose` compacts (a host synchronisation) only when a dense product could win at all:
    a one-token call with k=128 goes straight to the gather; an AuxK-sized call is weighed."""
    from workbench.kernels.decode import dense

    calls = []
    real_compact = dense.compact
    monkeypatch.setattr(dense, "compact", lambda *a: calls.append(a) or real_compact(*a))
    one_token = torch.randint(0, 16384, (1, 128))
    assert dense.choose(one_token, 16384, 576, torch.bfloat16, 2) is None
    assert calls == []
    aux = torch.randint(0, 13000, (4096, 1152))
    assert dense.choose(aux, 65536, 2304, torch.bfloat16, 4) is not None
    assert len(calls) == 1
