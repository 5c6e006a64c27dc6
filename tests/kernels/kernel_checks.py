"""Shared input builders and comparisons for the kernel tests (CPU interpreter and GPU)."""

from __future__ import annotations

import torch

# Relative tolerances by output dtype: fp32 kernels differ from the reference only in
# summation order; bf16/fp16 outputs are rounded once from fp32 sums (one ulp apart).
RTOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float | None = None) -> None:
    """|actual - expected| <= rtol * (|expected| + max|expected| * 1e-2), elementwise, with a readable failure."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    rtol = RTOL[expected.dtype] if rtol is None else rtol
    scale = e.abs().max().clamp_min(1e-6)
    bound = rtol * (e.abs() + 1e-2 * scale)
    excess = (a - e).abs() - bound
    worst = int(excess.argmax())
    assert (excess <= 0).all(), (
        f"{what}: {int((excess > 0).sum())} of {e.numel()} elements off; worst at flat {worst}: "
        f"{a.flatten()[worst].item():.6g} vs {e.flatten()[worst].item():.6g} (scale {scale.item():.3g})"
    )


def make_indices(n_rows: int, k: int, n_latents: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """[N, k] int64 latent ids.

    'unique': no latent twice in a row (as TopK produces), rows in random order;
    'sorted': unique and ascending along each row (as topk_encode returns them);
    'skewed': the first slots of every row hit a few hot latents and the rest come from a
    small pool with repeats, so some latents are named by every row (long latent segments).
    """
    if kind in ("unique", "sorted"):
        rows = torch.stack([torch.randperm(n_latents, generator=generator)[:k] for _ in range(n_rows)])
        return rows.sort(dim=1).values if kind == "sorted" else rows
    if kind == "skewed":
        hot = min(3, n_latents, k)
        pool = min(8, n_latents)
        rest = torch.randint(0, pool, (n_rows, k - hot), generator=generator)
        heads = torch.arange(hot).expand(n_rows, hot)
        return torch.cat([heads, rest], dim=1)
    raise ValueError(kind)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as `t` in a strided view (every other column of a wider tensor)."""
    wide = torch.empty(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    view = wide[:, ::2]
    assert not view.is_contiguous()
    return view


def assert_valid_topk(
    pre: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, k: int, absolute: bool, mask: torch.Tensor | None = None
) -> None:
    """idx holds k distinct ascending latents whose keys are all >= the k-th largest key of pre,
    and vals are their activated values (ReLU for TopK, sign kept for AbsTopK, 0 off the mask)."""
    assert idx.shape == (pre.shape[0], k) and vals.shape == (pre.shape[0], k)
    assert idx.dtype == torch.long and vals.dtype == pre.dtype
    if k > 1:
        assert (idx.diff(dim=1) > 0).all(), "slots not in strictly ascending latent order"
    key = pre.double().abs() if absolute else pre.double()
    if mask is not None:
        key = key.masked_fill(~mask, float("-inf"))
    kth = key.topk(k, dim=1).values[:, -1:]
    assert (key.gather(1, idx) >= kth).all(), "a selected latent ranks below the k-th largest"
    expected = pre.gather(1, idx)
    if not absolute:
        expected = expected.clamp_min(0)
    if mask is not None:
        expected = expected.masked_fill(~mask[idx], 0)
    assert torch.equal(vals, expected), "values are not the selected pre-activations (activated)"
