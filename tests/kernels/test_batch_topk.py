"""BatchTopK selection (the n largest entries of a whole batch): exact selection, flat order, errors.

Every backend runs torch.topk + sort (a Triton radix select lost to it on the H200), so
these tests check that one implementation through the public function, under both modes.
"""

from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels import batch_topk_indices, use


def assert_valid_batch_topk(values: torch.Tensor, idx: torch.Tensor, n: int) -> None:
    flat = values.reshape(-1).double()
    assert idx.shape == (n,) and idx.dtype == torch.long
    if n > 1:
        assert (idx.diff() > 0).all(), "indices not strictly ascending"
    if n:
        kth = flat.topk(n).values[-1]
        assert (flat[idx] >= kth).all(), "a selected entry ranks below the n-th largest"
        assert (flat[idx] > kth).sum() == (flat > kth).sum(), "entries above the threshold left out"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [0, 1, 37, 700])
def test_batch_topk_selects_exactly_the_n_largest(generator, dtype, n):
    values = torch.randn(9, 130, generator=generator).relu().to(dtype)  # many exact zeros: ties
    for mode in ("reference", "triton"):
        with use(mode):
            assert_valid_batch_topk(values, batch_topk_indices(values, n), n)


def test_batch_topk_bad_inputs():
    values = torch.randn(4, 10)
    with pytest.raises(WorkbenchError, match="0 <= n <= 40"):
        batch_topk_indices(values, 41)
    with pytest.raises(WorkbenchError, match="floating values"):
        batch_topk_indices(values.long(), 3)
