"""BatchTopK's selection from each token's top candidates (the GPU route, where the TopK
encoder's kernels give a sparse backward and the fast AuxK selection) against the
selection from the full pre-activations: the same entries, losses and gradients."""

from __future__ import annotations

import pytest
import torch

from workbench.sae import SaeConfig, create_sae
from workbench.sae import batchtopk
from workbench.sae.batchtopk import batch_topk_entries, batch_topk_from_candidates


def _candidates(pre: torch.Tensor, width: int):
    relu = torch.relu(pre)
    idx = relu.topk(width, dim=1).indices.sort(dim=1).values
    return relu.gather(1, idx), idx


def test_the_candidates_hold_the_batch_top_unless_a_row_fills_them():
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(32, 200, generator=gen) * (1 + 0.5 * torch.rand(32, 1, generator=gen))  # uneven rows
    rows, cols, vals = batch_topk_entries(pre, 8)
    got = batch_topk_from_candidates(*_candidates(pre, 32), 8)
    assert got is not None and int(torch.bincount(rows).max()) > 8  # rows do take different counts
    assert torch.equal(got[0], rows) and torch.equal(got[1], cols) and torch.equal(got[2], vals)
    pre[5] += 100.0  # row 5 now holds the batch's 256 largest entries: more than its 32 candidates
    assert batch_topk_from_candidates(*_candidates(pre, 32), 8) is None


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_training_step_through_the_candidates_equals_the_dense_route(arch, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    extra = {"matryoshka_widths": [16, 48]} if arch == "matryoshka" else {}
    x = torch.randn(64, 16, generator=gen)
    dead = torch.arange(48) % 3 == 0  # AuxK on
    results, answers = [], []
    real = batchtopk.batch_topk_from_candidates
    monkeypatch.setattr(batchtopk, "batch_topk_from_candidates", lambda *a: answers.append(real(*a)) or answers[-1])
    for route in ("dense", "candidates"):
        # CPU: the candidates come from the local topk_encode, the GPU route's exact twin.
        monkeypatch.setattr(batchtopk, "kernels_pay", lambda *args, route=route: route == "candidates")
        sae = create_sae(SaeConfig(arch, 16, 48, k=4, **extra), seed=3)
        out = sae.training_step(x, dead_mask=dead)
        out.loss.backward()
        results.append((out, {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}))
    (dense, dense_grads), (cand, cand_grads) = results
    assert len(answers) == 1 and answers[0] is not None  # the candidate route ran, without falling back
    assert "auxk" in dense.terms and "auxk" in cand.terms
    torch.testing.assert_close(cand.loss, dense.loss)
    torch.testing.assert_close(cand.terms["auxk"], dense.terms["auxk"])
    torch.testing.assert_close(cand.x_hat, dense.x_hat)
    assert torch.equal(cand.fired, dense.fired)
    assert dense_grads.keys() == cand_grads.keys()
    for name in dense_grads:
        torch.testing.assert_close(cand_grads[name], dense_grads[name], msg=name)
