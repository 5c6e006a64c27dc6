"""The public sparse ops: boundary checks, backend dispatch, and the lean no-grad path.

Importing this module registers the custom ops (`op.py` files: plain torch, milliseconds);
the Triton modules, and triton itself, are imported at the first call that needs them.

`sparse_decode` and `topk_encode` validate their inputs (shapes, dtypes, k ranges; index
ranges on CPU, where checking is cheap), ask `dispatch.active_backend` which backend runs,
and call it:
- reference: the autograd.Function over `reference.py`;
- triton: the torch.library custom op (autograd + fake registered), or, when no gradient
  is needed and torch.compile is not tracing, the Triton launcher directly. That lean path
  skips the custom-op and autograd boundaries (~10 us per call measured elsewhere), which
  matters for one-token inspection.
"""

from __future__ import annotations

import importlib

import torch

from workbench.errors import WorkbenchError
from workbench.kernels.batch_topk import reference as batch_topk_reference
from workbench.kernels.decode import op as decode_op
from workbench.kernels.dispatch import _resolve, active_backend
from workbench.kernels.encode import op as encode_op
from workbench.kernels.rows import op as rows_op
from workbench.kernels.rows import reference as rows_reference
from workbench.kernels.tuning import tuning_forced

_FLOAT_DTYPES = frozenset((torch.float32, torch.bfloat16, torch.float16, torch.float64))
_INDEX_DTYPES = frozenset((torch.int64, torch.int32))
_modules: dict[str, object] = {}


def _triton_module(name: str):
    # The Triton launchers import triton: only on first use, never at package import.
    module = _modules.get(name)
    if module is None:
        module = _modules[name] = importlib.import_module(f"workbench.kernels.{name}.triton")
    return module


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_indices(indices: torch.Tensor, n_latents: int, what: str) -> None:
    # Only on CPU and outside torch.compile: on CUDA the check would synchronise every call
    # and in a compiled graph it is data-dependent control flow. The Triton kernels skip
    # out-of-range indices (they never read outside W); the reference raises from indexing.
    if indices.device.type == "cpu" and indices.numel() > 0 and not torch.compiler.is_compiling():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= n_latents:
            raise WorkbenchError(
                f"{what} holds latent ids in [{low}, {high}] but the dictionary has {n_latents} latents; "
                f"expected ids in [0, {n_latents - 1}]"
            )


def _check_decode_inputs(acts, indices, W_dec, b_dec) -> None:
    # Ordered cheapest first: this runs on every call, including one-token decodes where
    # the whole call should take a few microseconds.
    if acts.dim() != 2 or indices.shape != acts.shape:
        raise WorkbenchError(
            f"sparse_decode expects acts and indices of one shape [N, k]; got acts {tuple(acts.shape)} "
            f"and indices {tuple(indices.shape)}"
        )
    if W_dec.dim() != 2:
        raise WorkbenchError(f"sparse_decode expects W_dec [d_sae, d_out]; got shape {tuple(W_dec.shape)}")
    if acts.dtype not in _FLOAT_DTYPES or W_dec.dtype not in _FLOAT_DTYPES:
        raise WorkbenchError(f"sparse_decode expects floating acts and W_dec; got {acts.dtype} and {W_dec.dtype}")
    if indices.dtype not in _INDEX_DTYPES:
        raise WorkbenchError(f"sparse_decode expects int64 or int32 indices; got {indices.dtype}")
    device = acts.device
    if b_dec is not None:
        if b_dec.dim() != 1 or b_dec.shape[0] != W_dec.shape[1]:
            raise WorkbenchError(f"sparse_decode expects b_dec [{W_dec.shape[1]}]; got shape {tuple(b_dec.shape)}")
        if b_dec.device != device:
            raise WorkbenchError("sparse_decode expects acts, indices, W_dec and b_dec on one device")
    if indices.device != device or W_dec.device != device:
        raise WorkbenchError("sparse_decode expects acts, indices, W_dec and b_dec on one device")
    if device.type == "cpu":
        _check_indices(indices, W_dec.shape[0], "indices")


def sparse_decode(
    acts: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None
) -> torch.Tensor:
    """y[n] = sum_j acts[n, j] * W_dec[indices[n, j]] (+ b_dec): the sparse decoder of a TopK-style SAE.

    acts [N, k] float (fp32/bf16/fp16), indices [N, k] int64 or int32, W_dec [d_sae, d_out]
    (its dtype may differ from acts', e.g. fp32 weights with bf16 codes under autocast),
    b_dec [d_out] or None. Returns y [N, d_out] in acts' dtype, summed in fp32.
    Differentiable in acts, W_dec and b_dec; the backward touches only the named rows of
    W_dec (d acts = gathered dot products, d W_dec = rows accumulated latent by latent).
    """
    no_grad = not (
        torch.is_grad_enabled()
        and (acts.requires_grad or W_dec.requires_grad or (b_dec is not None and b_dec.requires_grad))
    ) and not torch.compiler.is_compiling()
    backend = _resolve("sparse_decode", acts.device.type, acts.dtype)
    module = _modules.get("decode")
    if backend == "triton" and no_grad and module is not None and module._LEAN_PLANS and not tuning_forced():
        # A repeat of a signature already checked and launched (one-token inspection): its plan
        # skips the checks below, which the same shapes, strides, dtypes and devices passed.
        out = module.lean_decode(acts, indices, W_dec, b_dec)
        if out is not None:
            return out
    _check_decode_inputs(acts, indices, W_dec, b_dec)
    if backend == "triton":
        if no_grad:
            # The lean path: no custom-op or autograd boundary (one-token latency).
            module = module or _triton_module("decode")
            return module.decode_forward(acts, indices, W_dec, b_dec, no_grad=True)
        return decode_op.sparse_decode_op(acts, indices, W_dec, b_dec)
    return decode_op.ReferenceDecode.apply(acts, indices, W_dec, b_dec)


def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    *,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    absolute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TopK encoder: pre = x @ W_enc + b_enc, then the k largest per row.

    x [N, d_in], W_enc [d_in, d_sae] (a transposed view of a [d_sae, d_in] tensor is the
    fastest layout for the backward), b_enc [d_sae].
    absolute=False (TopK): the k largest pre, values through a ReLU (>= 0);
    absolute=True (AbsTopK): the k largest |pre|, sign kept.
    dead_mask [d_sae] bool with k_aux > 0 also returns the k_aux largest among dead latents
    (AuxK), ranked and activated the same way; otherwise aux tensors are empty [N, 0].
    Returns (vals [N, k], idx [N, k] int64, aux_vals [N, k_aux], aux_idx [N, k_aux] int64),
    values in x's dtype (the autocast dtype under autocast), slots in ascending latent order.
    The backward never builds a dense [N, d_sae] gradient.
    """
    if x.dim() != 2 or W_enc.dim() != 2 or b_enc.dim() != 1:
        raise WorkbenchError(
            f"topk_encode expects x [N, d_in], W_enc [d_in, d_sae], b_enc [d_sae]; got {tuple(x.shape)}, "
            f"{tuple(W_enc.shape)}, {tuple(b_enc.shape)}"
        )
    d_in, d_sae = W_enc.shape
    if x.shape[1] != d_in or b_enc.shape[0] != d_sae:
        raise WorkbenchError(
            f"topk_encode: x has width {x.shape[1]}, W_enc is [{d_in}, {d_sae}], b_enc has {b_enc.shape[0]} "
            "entries; expected x [N, d_in], W_enc [d_in, d_sae], b_enc [d_sae]"
        )
    if not (1 <= int(k) <= d_sae):
        raise WorkbenchError(f"topk_encode expects 1 <= k <= d_sae = {d_sae}; got k = {k}")
    if not (0 <= int(k_aux) <= d_sae):
        raise WorkbenchError(f"topk_encode expects 0 <= k_aux <= d_sae = {d_sae}; got k_aux = {k_aux}")
    if dead_mask is not None and (dead_mask.dtype != torch.bool or tuple(dead_mask.shape) != (d_sae,)):
        raise WorkbenchError(
            f"topk_encode expects dead_mask as a [d_sae] = [{d_sae}] bool tensor; got {dead_mask.dtype} "
            f"{tuple(dead_mask.shape)}"
        )
    for name, tensor in (("x", x), ("W_enc", W_enc), ("b_enc", b_enc)):
        if tensor.dtype not in _FLOAT_DTYPES:
            raise WorkbenchError(f"topk_encode expects a floating {name}; got {tensor.dtype}")
    devices = {x.device, W_enc.device, b_enc.device} | ({dead_mask.device} if dead_mask is not None else set())
    if len(devices) != 1:
        raise WorkbenchError("topk_encode expects x, W_enc, b_enc and dead_mask on one device")
    if torch.is_autocast_enabled(x.device.type):
        # The GEMM runs in the autocast dtype, as nn.Linear would under autocast.
        x = x.to(torch.get_autocast_dtype(x.device.type))
    k, k_aux = int(k), int(k_aux) if dead_mask is not None else 0

    backend = active_backend("topk_encode", x.device, x.dtype)
    if backend == "triton":
        if not _needs_grad(x, W_enc, b_enc) and not torch.compiler.is_compiling():
            return _triton_module("encode").encode_forward(x, W_enc, b_enc, k, dead_mask, k_aux, absolute)
        return encode_op.topk_encode_op(x, W_enc, b_enc, k, dead_mask, k_aux, bool(absolute))
    return encode_op.ReferenceTopKEncode.apply(x, W_enc, b_enc, k, dead_mask, k_aux, bool(absolute))


def batch_topk_indices(values: torch.Tensor, n: int) -> torch.Tensor:
    """Flat indices [n] int64, ascending, of the n largest entries of `values` (any shape).

    BatchTopK's selection: values = ReLU(pre) [N, d_sae], n = k * N; row = idx // d_sae,
    latent = idx % d_sae. Integer output, no gradient: gather the values you need from
    `values` (which keeps its graph). Among ties at the n-th place the choice is
    unspecified. Every backend runs torch.topk + sort (`batch_topk/reference.py`): an exact
    Triton radix select was measured on the H200 at 3.3x torch's time and was removed.
    """
    if not values.is_floating_point():
        raise WorkbenchError(f"batch_topk_indices expects floating values; got {values.dtype}")
    if not (0 <= int(n) <= values.numel()):
        raise WorkbenchError(f"batch_topk_indices expects 0 <= n <= {values.numel()} (the number of entries); got n = {n}")
    return batch_topk_reference.batch_topk_indices(values, int(n))


def _check_rows(name: str, weight: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    if weight.dim() != 2 or weight.dtype not in _FLOAT_DTYPES:
        raise WorkbenchError(f"{name} expects a floating weight [d_sae, d_out]; got {weight.dtype} {tuple(weight.shape)}")
    if grad is not None and (grad.shape != weight.shape or grad.device != weight.device or grad.dtype not in _FLOAT_DTYPES):
        raise WorkbenchError(
            f"{name} expects grad and weight of one shape on one device; got grad {grad.dtype} {tuple(grad.shape)} "
            f"on {grad.device} and weight {tuple(weight.shape)} on {weight.device}"
        )


def remove_parallel_component_(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """In place: grad[m] -= <grad[m], weight[m]> * weight[m] for each row (weight rows at unit
    norm: the step then moves rows along their sphere). grad, weight [d_sae, d_out]; fp32 math.
    Returns grad."""
    _check_rows("remove_parallel_component_", weight, grad)
    if _resolve("row_upkeep", weight.device.type, weight.dtype) == "triton":
        rows_op.remove_parallel_component_op(grad, weight)
        return grad
    return rows_reference.remove_parallel_component_(grad, weight)


def normalize_rows_(weight: torch.Tensor) -> torch.Tensor:
    """In place: every row of weight [d_sae, d_out] to unit L2 norm (norm clamped at 1e-12). Returns weight."""
    _check_rows("normalize_rows_", weight)
    if _resolve("row_upkeep", weight.device.type, weight.dtype) == "triton":
        rows_op.normalize_rows_op(weight)
        return weight
    return rows_reference.normalize_rows_(weight)
