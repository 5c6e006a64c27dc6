"""TopK encoder in plain torch with fp32 accumulation: the specification of the op.

Forward, for x [N, d_in], W_enc [d_in, d_sae], b_enc [d_sae]:
    pre = x @ W_enc + b_enc           accumulated in fp32, rounded to x's dtype (as a
                                      bf16 GEMM with fp32 accumulation returns it)
    absolute=False (TopK):    idx = the k largest pre per row;    vals = relu(pre[idx])
    absolute=True  (AbsTopK): idx = the k largest |pre| per row;  vals = pre[idx] (sign kept)
    AuxK (dead_mask [d_sae] bool, k_aux > 0): aux_idx = the k_aux largest among dead latents,
    ranked and activated the same way; slots beyond the number of dead latents carry 0.
Slots come back in ascending latent order (idx sorted along each row). Among equal values
at the k-th place the choice is unspecified (the Triton kernel keeps the lowest indices).
vals/aux_vals [N, k]/[N, k_aux] in x's dtype, idx/aux_idx int64.

Backward, never building a dense [N, d_sae] gradient. With g = grad_vals * (vals > 0) for
TopK (the ReLU's gradient) or g = grad_vals for AbsTopK, and the same for the aux slots
(times dead_mask[aux_idx]), the main and aux slots are concatenated into one list of
(row, latent, g) triples and:
    dx[n]        = sum_j g[n, j] * W_enc[:, idx[n, j]]             (gather_sum over W_enc^T)
    dW_enc[:, l] = sum over pairs with idx == l of g * x[n]        (scatter_rows, transposed)
    db_enc[l]    = sum over pairs with idx == l of g
"""

from __future__ import annotations

import torch

from workbench.kernels.decode.reference import gather_sum, scatter_rows


def preactivations(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """pre = x @ W_enc + b_enc with fp32 accumulation, rounded to x's dtype: [N, d_sae]."""
    acc = torch.float64 if torch.float64 in (x.dtype, W_enc.dtype, b_enc.dtype) else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.addmm(b_enc.to(acc), x.to(acc), W_enc.to(acc)).to(x.dtype)


def select_topk(
    pre: torch.Tensor, k: int, absolute: bool, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(vals [N, k] in pre's dtype, idx [N, k] int64 ascending) of the k largest pre (or |pre|).

    With `mask` [d_sae] bool only masked-in latents compete; slots that fall on a masked-out
    latent (fewer than k masked in) get value 0.
    """
    n_rows, width = pre.shape
    if k == 0:
        return pre.new_zeros(n_rows, 0), torch.zeros(n_rows, 0, dtype=torch.long, device=pre.device)
    key = pre.abs() if absolute else pre
    if mask is not None:
        key = key.masked_fill(~mask, float("-inf"))
    _, idx = key.topk(k, dim=1, sorted=False)
    idx, _ = idx.sort(dim=1)
    vals = pre.gather(1, idx)
    if not absolute:
        vals = vals.clamp_min(0)
    if mask is not None:
        vals = vals.masked_fill(~mask[idx], 0)
    return vals, idx


def encode_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead_mask: torch.Tensor | None,
    k_aux: int,
    absolute: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vals, idx, aux_vals, aux_idx): see the module docstring."""
    pre = preactivations(x, W_enc, b_enc)
    vals, idx = select_topk(pre, k, absolute)
    if k_aux > 0 and dead_mask is not None:
        aux_vals, aux_idx = select_topk(pre, k_aux, absolute, mask=dead_mask)
    else:
        aux_vals, aux_idx = select_topk(pre, 0, absolute)
    return vals, idx, aux_vals, aux_idx


def slot_gradient_parts(
    grad_vals: torch.Tensor,
    grad_aux_vals: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    aux_vals: torch.Tensor,
    aux_idx: torch.Tensor,
    dead_mask: torch.Tensor | None,
    absolute: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(g [N, k], idx)] plus (g_aux [N, k_aux], aux_idx) when there are aux slots: the
    gradient w.r.t. pre at every selected slot, main and aux slots apart.

    The ReLU passes the gradient where the value is positive (TopK); AbsTopK passes it
    everywhere; aux slots that landed on a live latent (too few dead ones) pass nothing.
    """
    g_main = grad_vals if absolute else torch.where(vals > 0, grad_vals, torch.zeros_like(grad_vals))
    if aux_idx.shape[1] == 0:
        return [(g_main, idx)]
    g_aux = grad_aux_vals if absolute else torch.where(aux_vals > 0, grad_aux_vals, torch.zeros_like(grad_aux_vals))
    if dead_mask is not None:
        g_aux = torch.where(dead_mask[aux_idx], g_aux, torch.zeros_like(g_aux))
    return [(g_main, idx), (g_aux, aux_idx)]


def slot_gradients(
    grad_vals: torch.Tensor,
    grad_aux_vals: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    aux_vals: torch.Tensor,
    aux_idx: torch.Tensor,
    dead_mask: torch.Tensor | None,
    absolute: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g [N, k + k_aux], latent [N, k + k_aux]): `slot_gradient_parts` concatenated."""
    parts = slot_gradient_parts(grad_vals, grad_aux_vals, vals, idx, aux_vals, aux_idx, dead_mask, absolute)
    if len(parts) == 1:
        return parts[0]
    return torch.cat([parts[0][0], parts[1][0]], dim=1), torch.cat([parts[0][1], parts[1][1]], dim=1)


def encode_backward(
    g: torch.Tensor,
    latents: torch.Tensor,
    x: torch.Tensor,
    W_enc: torch.Tensor,
    need_x: bool = True,
    need_weight: bool = True,
    need_bias: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx [N, d_in] in x's dtype, dW_enc [d_in, d_sae] in W_enc's dtype, db_enc [d_sae] fp32/fp64).

    `g`, `latents` [N, k + k_aux] come from `slot_gradients`. None where not needed.
    """
    dx = gather_sum(g, latents, W_enc.t()).to(x.dtype) if need_x else None
    d_weight = scatter_rows(g, latents, x, W_enc.shape[1]).t().to(W_enc.dtype) if need_weight else None
    d_bias = None
    if need_bias:
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        d_bias = torch.zeros(W_enc.shape[1], dtype=acc, device=g.device)
        d_bias.index_add_(0, latents.reshape(-1).long(), g.reshape(-1).to(acc))
    return dx, d_weight, d_bias
