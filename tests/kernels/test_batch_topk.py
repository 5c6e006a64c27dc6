"""BatchTopK selection (the n largest entries of a whole batch): Triton under the CPU
interpreter against the torch reference, ties included."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels import batch_topk_indices, use
from workbench.kernels.batch_topk import op as batch_topk_op
from workbench.kernels.batch_topk import triton as kernels


def assert_valid_batch_topk(values: torch.Tensor, idx: torch.Tensor, n: int) -> None:
    flat = values.reshape(-1).double()
    assert idx.shape == (n,) and idx.dtype == torch.long
    if n > 1:
        assert (idx.diff() > 0).all(), "indices not strictly ascending"
    if n:
        kth = flat.topk(n).values[-1]
        assert (flat[idx] >= kth).all(), "a selected entry ranks below the n-th largest"
        assert int((flat > kth).sum()) <= n, "entries above the threshold left out"
        assert (flat[idx] > kth).sum() == (flat > kth).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 37, 700])
def test_batch_topk_selects_exactly_the_n_largest(interpreter, generator, dtype, n):
    values = torch.randn(9, 130, generator=generator).relu().to(dtype)  # many exact zeros: ties
    idx = batch_topk_indices(values, n)
    assert_valid_batch_topk(values, idx, n)
    if dtype == torch.float32 and n < int((values > 0).sum()):  # distinct positive values: one answer
        with use("reference"):
            assert torch.equal(idx, batch_topk_indices(values, n))


def test_batch_topk_ties_go_to_the_lowest_flat_index(interpreter):
    values = torch.tensor([[0.5, 2.0, 0.5, 1.0], [0.5, 3.0, 0.5, 0.5]])
    assert batch_topk_indices(values, 4).tolist() == [0, 1, 3, 5]
    assert batch_topk_indices(values, 8).tolist() == list(range(8))


def test_batch_topk_every_config_and_block_edges(interpreter, generator):
    values = torch.randn(3, 5000, generator=generator).to(torch.bfloat16)  # not a multiple of any block
    for config in kernels.BATCH_TOPK.candidates:
        idx = kernels.batch_topk_indices(values, 1234, config=config)
        assert_valid_batch_topk(values, idx, 1234)


def test_batch_topk_bad_n_and_opcheck(interpreter, generator):
    values = torch.randn(4, 10, generator=generator)
    with pytest.raises(WorkbenchError, match="0 <= n <= 40"):
        batch_topk_indices(values, 41)
    results = torch.library.opcheck(batch_topk_op.batch_topk_indices_op, (values, 7))
    assert set(results.values()) == {"SUCCESS"}, results
