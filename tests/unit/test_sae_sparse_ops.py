"""The SAE's sparse ops: local versions agree with the kernels' reference (values and
gradients), and the first-use check rejects a kernel that is wrong."""

from __future__ import annotations

import torch

from workbench.kernels import use
from workbench.kernels import sparse_decode as kernels_decode
from workbench.kernels import topk_encode as kernels_encode
from workbench.sae.sparse_ops import _first_use_check, local_sparse_decode, local_topk_encode, ragged_decode


def _inputs(seed=0, n=9, d_in=7, d_sae=33, k=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    W_enc, b_enc = torch.randn(d_in, d_sae, generator=g), torch.randn(d_sae, generator=g) * 0.1
    W_dec, b_dec = torch.randn(d_sae, d_in, generator=g), torch.randn(d_in, generator=g)
    return x, W_enc, b_enc, W_dec, b_dec, k


def _dense(out, d_sae):
    vals, idx, aux_vals, aux_idx = out
    dense = torch.zeros(vals.shape[0], d_sae).scatter_add(1, idx, vals)
    if aux_vals is not None and aux_vals.numel():
        dense = dense + 0.5 * torch.zeros_like(dense).scatter_add(1, aux_idx, aux_vals)
    return dense


def test_local_versions_match_the_kernels_reference():
    x, W_enc, b_enc, W_dec, b_dec, k = _inputs()
    dead = torch.zeros(33, dtype=torch.bool)
    dead[::3] = True
    with use("reference"):
        for absolute in (False, True):
            ok, detail = _first_use_check(
                lambda a, b, c: kernels_encode(a, b, c, k, dead_mask=dead, k_aux=4, absolute=absolute),
                lambda a, b, c: local_topk_encode(a, b, c, k, dead_mask=dead, k_aux=4, absolute=absolute),
                [x, W_enc, b_enc], lambda out: _dense(out, 33))
            assert ok, detail
        idx = torch.randint(0, 33, (9, 5), generator=torch.Generator().manual_seed(1))
        acts = torch.randn(9, 5)
        ok, detail = _first_use_check(kernels_decode, local_sparse_decode, [acts, idx, W_dec, b_dec], lambda y: y)
        assert ok, detail


def test_first_use_check_catches_a_wrong_kernel():
    _, _, _, W_dec, b_dec, _ = _inputs(1)
    idx = torch.randint(0, 33, (9, 5), generator=torch.Generator().manual_seed(2))
    acts = torch.randn(9, 5)

    def forgets_the_bias(a, i, w, b):
        return local_sparse_decode(a, i, w, None)

    def wrong_gradient(a, i, w, b):  # right values, but no gradient reaches the weights
        return local_sparse_decode(a, i, w.detach(), b)

    ok, detail = _first_use_check(forgets_the_bias, local_sparse_decode, [acts, idx, W_dec, b_dec], lambda y: y)
    assert not ok and "output" in detail
    ok, detail = _first_use_check(wrong_gradient, local_sparse_decode, [acts, idx, W_dec, b_dec], lambda y: y)
    assert not ok and "gradient" in detail


def test_ragged_decode_equals_dense_matmul():
    g = torch.Generator().manual_seed(3)
    codes = torch.relu(torch.randn(6, 20, generator=g) - 1.0)
    codes[2] = 0  # a row with nothing active
    W = torch.randn(20, 4, generator=g)
    rows, cols = codes.nonzero(as_tuple=True)
    out = ragged_decode(rows, cols, codes[rows, cols], 6, W, torch.ones(4))
    assert torch.allclose(out, codes @ W + 1, atol=1e-5)


def test_ragged_codes_take_the_kernels_wherever_sparse_decode_does(monkeypatch):
    # The route follows sparse_decode's choice, including after its kernel passed the
    # first-use check ("verified"), which once sent every ragged decode to the dense route.
    from workbench.sae import sparse_ops

    vals = torch.ones(3)
    W_dec = torch.empty(512, 64)  # 2 x 4096 rows x 512 x 64 = 0.27 GFLOP of dense decode
    monkeypatch.setattr(sparse_ops, "RAGGED_KERNELS_MIN_FLOP", 2.5e8)
    key = ("sparse_decode", "cpu", torch.float32)
    for choice, route in (("kernels", "kernels"), ("verified", "kernels"), ("local", "dense")):
        monkeypatch.setitem(sparse_ops._CHOICES, key, choice)
        assert sparse_ops.ragged_route(vals, 4096, W_dec) == route, choice
        assert sparse_ops.ragged_route(vals, 2048, W_dec) == "dense"  # too small a decode to pay
        with sparse_ops.dense_ragged():
            assert sparse_ops.ragged_route(vals, 4096, W_dec) == "dense"


def test_a_kernel_that_failed_its_check_is_not_checked_again(monkeypatch, caplog):
    # ragged_decode is gated by sparse_decode's choice, so its own failed check must stick:
    # one warning, then the local version without checking again.
    from workbench.sae import sparse_ops

    monkeypatch.setattr(sparse_ops, "_CHOICES", {})
    monkeypatch.setattr(sparse_ops, "_VERIFIED", set())
    calls = []

    def broken(x):
        calls.append(1)
        return x * 2

    x = torch.ones(3)
    for _ in range(3):
        out = sparse_ops._verified("probe", x, broken, lambda t: t, [x], canonical=lambda y: y)
        assert torch.equal(out, x)
    assert len(calls) == 1
    assert sum("failed its first-use check" in r.message for r in caplog.records) == 1
