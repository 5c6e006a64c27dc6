"""Sparse decode in plain torch with fp32 accumulation: the specification of the op.

    y[n] = sum_j acts[n, j] * W_dec[indices[n, j]] + b_dec

acts [N, k] (fp32/bf16/fp16), indices [N, k] (int64 or int32, values in [0, d_sae)),
W_dec [d_sae, d_out] (any float dtype, may differ from acts'), b_dec [d_out] or None.
y [N, d_out] comes back in acts' dtype; every sum runs in fp32 (fp64 when an input is fp64,
so that gradcheck can check the backward).

The backward is written out too, because it is part of the spec: it never builds a dense
[N, d_sae] tensor.
    d_acts[n, j] = <grad_y[n], W_dec[indices[n, j]]>                (a gathered dot product)
    d_W_dec[l]   = sum over (n, j) with indices[n, j] == l of acts[n, j] * grad_y[n]
    d_b_dec      = sum_n grad_y[n]

The three primitives below (gather_sum, gather_dot, scatter_rows) are shared with the
TopK encoder's sparse backward. They work in row chunks so that the gathered
[chunk, k, d] block stays under ~64 MB whatever N is.
"""

from __future__ import annotations

import torch

_CHUNK_ELEMENTS = 1 << 24  # fp32 elements in one gathered [chunk, k, d] block (64 MB)


def _row_chunks(n_rows: int, k: int, width: int) -> range:
    """Row-chunk starts such that one gathered [chunk, k, width] block stays under the budget."""
    step = max(1, _CHUNK_ELEMENTS // max(1, k * width))
    return range(0, n_rows, step)


def _acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when any input is fp64 (the spec never sums in less than fp32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _no_autocast(device: torch.device):
    # Autocast would run the fp32 matmuls below in bf16; the spec accumulates in fp32.
    return torch.autocast(device_type=device.type, enabled=False)


def gather_sum(coefs: torch.Tensor, indices: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """out[n] = sum_j coefs[n, j] * table[indices[n, j]]: [N, k], [N, k], [M, D] -> [N, D] (fp32/fp64)."""
    n_rows, k = coefs.shape
    acc = _acc_dtype(coefs, table)
    out = torch.zeros(n_rows, table.shape[1], dtype=acc, device=table.device)
    if k == 0:
        return out
    with _no_autocast(table.device):
        step = _row_chunks(n_rows, k, table.shape[1]).step
        for start in range(0, n_rows, step):
            rows = table[indices[start : start + step].long()].to(acc)  # [n, k, D]
            out[start : start + step] = torch.bmm(coefs[start : start + step].to(acc).unsqueeze(1), rows).squeeze(1)
    return out


def gather_dot(rows: torch.Tensor, indices: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """out[n, j] = <rows[n], table[indices[n, j]]>: [N, D], [N, k], [M, D] -> [N, k] (fp32/fp64)."""
    n_rows, k = indices.shape
    acc = _acc_dtype(rows, table)
    out = torch.zeros(n_rows, k, dtype=acc, device=table.device)
    if k == 0:
        return out
    with _no_autocast(table.device):
        step = _row_chunks(n_rows, k, table.shape[1]).step
        for start in range(0, n_rows, step):
            gathered = table[indices[start : start + step].long()].to(acc)  # [n, k, D]
            out[start : start + step] = torch.bmm(gathered, rows[start : start + step].to(acc).unsqueeze(2)).squeeze(2)
    return out


def scatter_rows(coefs: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, n_out: int) -> torch.Tensor:
    """out[l] = sum over (n, j) with indices[n, j] == l of coefs[n, j] * rows[n]: -> [n_out, D] (fp32/fp64).

    Rows of `out` that no index names are zero.
    """
    n_rows, k = coefs.shape
    acc = _acc_dtype(coefs, rows)
    out = torch.zeros(n_out, rows.shape[1], dtype=acc, device=rows.device)
    if k == 0:
        return out
    with _no_autocast(rows.device):
        step = _row_chunks(n_rows, k, rows.shape[1]).step
        for start in range(0, n_rows, step):
            c = coefs[start : start + step].to(acc)  # [n, k]
            r = rows[start : start + step].to(acc)  # [n, D]
            contributions = (c.unsqueeze(2) * r.unsqueeze(1)).reshape(-1, rows.shape[1])
            out.index_add_(0, indices[start : start + step].reshape(-1).long(), contributions)
    return out


def decode_forward(
    acts: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> torch.Tensor:
    """y = sum_j acts[:, j] * W_dec[indices[:, j]] (+ b_dec) in fp32, returned in acts' dtype: [N, d_out]."""
    y = gather_sum(acts, indices, W_dec)
    if b_dec is not None:
        y += b_dec.to(y.dtype)
    return y.to(acts.dtype)


def decode_backward(
    grad_y: torch.Tensor,
    acts: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    need_acts: bool = True,
    need_weight: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d_acts [N, k] in acts' dtype, d_W_dec [d_sae, d_out] in W_dec's dtype); None where not needed.

    The bias gradient is grad_y summed over rows (callers do that; it needs no indices).
    """
    d_acts = gather_dot(grad_y, indices, W_dec).to(acts.dtype) if need_acts else None
    d_weight = scatter_rows(acts, indices, grad_y, W_dec.shape[0]).to(W_dec.dtype) if need_weight else None
    return d_acts, d_weight
