"""The decoder-row upkeep kernels (workbench.kernels.rows) against their reference, in the
CPU interpreter: shapes that are not powers of two, rows longer than one column block,
fp32 and bf16, a strided (non-contiguous) weight view; opcheck on both custom ops; bad input."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels import normalize_rows_, remove_parallel_component_, use
from workbench.kernels.rows import op as rows_op
from workbench.kernels.rows import reference

SHAPES = [(1, 1), (37, 100), (5, 2304), (64, 1030)]


def _inputs(shape, dtype, generator, strided=False):
    rows, width = shape
    columns = 2 * width if strided else width
    weight = torch.randn(rows, columns, generator=generator)
    grad = torch.randn(rows, columns, generator=generator)
    if strided:
        weight, grad = weight[:, ::2], grad[:, 1::2]
    weight = weight / weight.norm(dim=1, keepdim=True)
    weight = torch.empty_strided(weight.shape, (columns, 2) if strided else (width, 1)).copy_(weight)
    return grad.to(dtype), weight.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_row_upkeep_matches_reference(interpreter, generator, shape, dtype, strided):
    grad, weight = _inputs(shape, dtype, generator, strided)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    want_grad = reference.remove_parallel_component_(grad.clone(), weight)
    got_grad = grad.clone()
    assert remove_parallel_component_(got_grad, weight) is got_grad
    torch.testing.assert_close(got_grad.float(), want_grad.float(), **tol)
    scaled = weight * 3.0  # rows of norm 3 -> 1
    want_weight = reference.normalize_rows_(scaled.clone())
    got_weight = scaled.clone()
    normalize_rows_(got_weight)
    torch.testing.assert_close(got_weight.float(), want_weight.float(), **tol)
    if dtype == torch.float32:
        # the behaviour that matters: rows at unit norm, gradients orthogonal to their rows
        torch.testing.assert_close(got_weight.norm(dim=1), torch.ones(shape[0]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close((got_grad * weight).sum(1), torch.zeros(shape[0]), rtol=0, atol=1e-4)


def test_zero_rows_stay_finite(interpreter):
    weight = torch.zeros(3, 50)
    normalize_rows_(weight)
    assert torch.equal(weight, torch.zeros(3, 50))


def test_row_upkeep_opcheck(interpreter, generator):
    grad, weight = _inputs((6, 40), torch.float32, generator)
    for op, args in ((rows_op.remove_parallel_component_op, (grad, weight)), (rows_op.normalize_rows_op, (weight,))):
        results = torch.library.opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, results


def test_reference_backend_on_cpu_by_default(generator):
    grad, weight = _inputs((4, 9), torch.float32, generator)
    want = grad - (grad * weight).sum(1, keepdim=True) * weight
    with use("auto"):
        torch.testing.assert_close(remove_parallel_component_(grad, weight), want)


def test_bad_row_inputs_say_what_was_expected():
    with pytest.raises(WorkbenchError, match=r"one shape"):
        remove_parallel_component_(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(WorkbenchError, match=r"floating weight \[d_sae, d_out\]"):
        normalize_rows_(torch.zeros(3))
