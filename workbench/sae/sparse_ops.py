"""The two sparse operations the dictionaries lean on: TopK selection and sparse decoding.

`topk_encode` and `sparse_decode` run the Triton kernels of `workbench.kernels` wherever
that package would use them (CUDA, or forced), and otherwise the local torch versions
below, which compute the same thing (they are checked against the kernels' reference in
the tests). The choice is made once per (op, device, dtype) and logged; the first call of
a kernel is also checked against the local version, and a kernel that fails is dropped
for it with a warning (DESIGN.md: kernel dispatch is the one place a fallback is allowed,
and it logs). `ragged_decode` serves codes with a variable number of active latents.

Shapes: x [N, d_in], W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out],
acts / indices [N, k] (indices int64).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_CHOICES: dict[tuple, str] = {}
"""(op, device type, dtype) -> 'kernels' or 'local' (a kernel that fails its first-use check
turns its key to 'local')."""
_VERIFIED: set[tuple] = set()
"""The keys whose kernel passed its first-use check."""


def _choose(op: str, tensor: torch.Tensor) -> str:
    """'kernels' when workbench.kernels would run its Triton kernel for this device/dtype,
    else 'local' (cached per (op, device type, dtype), logged once).

    On CPU the kernels package runs its reference, which computes the same values as the
    local versions here but more slowly (it gathers [chunk, k, d] blocks where the local
    decode uses embedding_bag), so the local versions serve there.
    """
    key = (op, tensor.device.type, tensor.dtype)
    if key not in _CHOICES:
        try:
            from workbench.kernels import active_backend  # noqa: PLC0415 (optional sibling package)

            backend = active_backend(op, tensor.device, tensor.dtype)
        except ImportError:
            backend = "unavailable"
        _CHOICES[key] = "kernels" if backend == "triton" else "local"
        log.info("sae: %s on %s/%s uses the %s implementation (kernels backend: %s)",
                 op, key[1], key[2], _CHOICES[key], backend)
    return _CHOICES[key]


def _first_use_check(fast, slow, inputs: list, canonical) -> tuple[bool, str]:
    """Compare a kernel with the local version on these inputs: outputs and gradients.

    Both run on detached copies (floating inputs as fresh leaves); `canonical(output)` maps
    an output to one dense float tensor (so slot order does not matter), whose product with
    a fixed random cotangent is back-propagated. Tolerance: 2% of the largest magnitude
    (loose enough for bf16, tight enough to catch a wrong index or a dropped term).
    """
    results = []
    for fn in (fast, slow):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
                  for t in inputs]
        with torch.enable_grad():
            dense = canonical(fn(*leaves)).float()
            gen = torch.Generator(device=dense.device).manual_seed(1234)
            cotangent = torch.randn(dense.shape, generator=gen, device=dense.device)
            floats = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
            grads = torch.autograd.grad((dense * cotangent).sum(), floats, allow_unused=True)
        results.append([dense.detach()] + [g.float() if g is not None else None for g in grads])
    for name, a, b in zip(["output"] + [f"grad {i}" for i in range(len(results[0]) - 1)], *results):
        if a is None or b is None:
            if (a is None) != (b is None):
                return False, f"{name}: one implementation gives no gradient"
            continue
        err = float((a - b).abs().max()) if a.numel() else 0.0
        scale = float(b.abs().max()) if b.numel() else 0.0
        if not err <= 2e-2 * max(scale, 1e-6):
            return False, f"{name}: max abs diff {err:.3g} (scale {scale:.3g})"
    return True, "outputs and gradients agree"


def _verified(op: str, tensor: torch.Tensor, fast, slow, inputs: list, canonical) -> object:
    """Run the kernel `fast(*inputs)`; on its first use per (op, device, dtype) first check it
    against the local `slow` (outputs and gradients). A kernel that raises or disagrees is
    dropped for the local version with a warning: a training run on a new machine must not
    die or drift on a kernel bug."""
    key = (op, tensor.device.type, tensor.dtype)
    if key in _VERIFIED:
        return fast(*inputs)
    if _CHOICES.get(key) == "local":
        return slow(*inputs)  # dropped after a failed check (ragged_decode's gate is sparse_decode's choice)
    try:
        ok, detail = _first_use_check(fast, slow, inputs, canonical)
    except Exception as error:  # noqa: BLE001 (any kernel failure means: use the local path)
        ok, detail = False, f"{type(error).__name__}: {error}"
    if ok:
        _VERIFIED.add(key)
        log.info("sae: the %s kernel on %s/%s passed its first-use check", op, key[1], key[2])
        return fast(*inputs)
    log.warning("sae: the %s kernel on %s/%s failed its first-use check (%s); using the local version",
                op, key[1], key[2], detail)
    _CHOICES[key] = "local"
    return slow(*inputs)


def local_sparse_decode(
    acts: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None
) -> torch.Tensor:
    """y[n] = sum_j acts[n, j] * W_dec[indices[n, j]] (+ b_dec): [N, k] x [d_sae, d_out] -> [N, d_out].

    On CPU an `embedding_bag` (no [N, k, d_out] gather in memory, sparse-friendly backward);
    on GPU a scatter into a dense [N, d_sae] code and one matmul, which autocasts to bf16
    (CUDA's embedding_bag has no bf16 backward for per-sample weights).
    """
    if acts.shape[-1] == 0:
        out = acts.new_zeros(acts.shape[0], W_dec.shape[1], dtype=W_dec.dtype)
    elif acts.device.type == "cpu":
        out = F.embedding_bag(indices, W_dec, per_sample_weights=acts.to(W_dec.dtype), mode="sum")
    else:
        dense = torch.zeros(acts.shape[0], W_dec.shape[0], dtype=W_dec.dtype, device=acts.device)
        dense = dense.scatter(1, indices, acts.to(W_dec.dtype))
        out = dense @ W_dec
    return out if b_dec is None else out + b_dec


PAD_MULTIPLE = 32
"""padded_codes rounds the longest row up to a multiple of this many slots."""


def padded_codes(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int, n_latents: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged entries [E] (rows ascending) -> (acts [n_rows, k_max], indices [n_rows, k_max] int64).

    Each row's entries come first, in their order; the rest of the row is padding with
    coefficient 0 at latent n_latents, out of the dictionary's range, which every
    workbench.kernels decode kernel skips (no load, no gradient row). k_max is the largest
    row count rounded up to a multiple of PAD_MULTIPLE (one host synchronisation): the
    kernels tune their launch configs per k, and a k that changed every training step
    would be tuned again every step. acts keep the autograd graph to vals.
    """
    counts = torch.bincount(rows, minlength=n_rows)
    k_max = -(-int(counts.max()) // PAD_MULTIPLE) * PAD_MULTIPLE if rows.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    indices = torch.full((n_rows, k_max), n_latents, dtype=torch.int64, device=rows.device)
    indices[rows, slot] = cols.long()
    acts = vals.new_zeros((n_rows, k_max)).index_put((rows, slot), vals)
    return acts, indices


def kernel_ragged_decode(rows, cols, vals, n_rows: int, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None):
    """ragged_decode through the sparse-decode kernels: the entries padded to [N, k_max]
    (`padded_codes`) and decoded by the `workbench::sparse_decode` op (autograd included;
    its launchers take the padding's out-of-range latent, which the public op's input
    check would refuse on CPU)."""
    from workbench.kernels.decode import op as decode_op  # noqa: PLC0415 (optional sibling package)

    # The dtype the dense route's matmul gives (the autocast dtype, else W_dec's): the op
    # returns its codes' dtype.
    device = W_dec.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else W_dec.dtype
    acts, indices = padded_codes(rows, cols, vals.to(dtype), n_rows, W_dec.shape[0])
    return decode_op.sparse_decode_op(acts, indices, W_dec, b_dec)


def dense_ragged_decode(rows, cols, vals, n_rows: int, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None):
    """ragged_decode by a dense [n_rows, d_sae] code and one matmul (autocasts to bf16 on GPU)."""
    dense = torch.zeros(n_rows, W_dec.shape[0], dtype=W_dec.dtype, device=W_dec.device)
    dense = dense.index_put((rows, cols), vals.to(W_dec.dtype))
    out = dense @ W_dec
    return out if b_dec is None else out + b_dec


_ragged_local = threading.local()


@contextlib.contextmanager
def dense_ragged() -> Iterator[None]:
    """Inside the block, ragged codes on GPU take the dense routes: ragged_decode's matmul, and
    BatchTopK's selection from the full pre-activations (benchmarks compare the two)."""
    previous = getattr(_ragged_local, "dense", False)
    _ragged_local.dense = True
    try:
        yield
    finally:
        _ragged_local.dense = previous


RAGGED_KERNELS_MIN_FLOP = 4e11
"""Below this many dense-decode FLOPs (2 x n_rows x d_sae x d_out) ragged codes take the dense
route: measured on the H200 (bench/results/h200-run8, a whole BatchTopK / Matryoshka training
step), the kernels' padding, host synchronisation and launches cost 3-7% more than the dense
matmul at 4096 x 16384 x 576 (0.08 TFLOP) and saved 10% / 26% of the step at 4096 x 65536 x
2304 (1.2 TFLOP)."""


def kernels_pay(op: str, tensor: torch.Tensor, n_rows: int, W_dec: torch.Tensor) -> bool:
    """True where `op` runs its kernel for tensor's device and dtype (not dropped after a failed
    first-use check), the dense decode of n_rows rows would cost at least
    RAGGED_KERNELS_MIN_FLOP, and no `dense_ragged()` block is open."""
    if getattr(_ragged_local, "dense", False):
        return False
    if 2.0 * n_rows * W_dec.shape[0] * W_dec.shape[1] < RAGGED_KERNELS_MIN_FLOP:
        return False
    return _choose(op, tensor) != "local"


def ragged_route(vals: torch.Tensor, n_rows: int, W_dec: torch.Tensor) -> str:
    """'kernels' or 'dense' for ragged_decode (`kernels_pay` for sparse_decode)."""
    return "kernels" if kernels_pay("sparse_decode", vals, n_rows, W_dec) else "dense"


def ragged_decode(
    rows: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    n_rows: int,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode a variable number of active latents per row: entries (rows, cols, vals) [E],
    rows sorted ascending, into [n_rows, d_out] (+ b_dec). BatchTopK, JumpReLU and
    Matryoshka codes have no fixed k per token, so they come here instead of sparse_decode.

    CPU: an embedding_bag over the entries. GPU: the sparse-decode kernels on the codes
    padded to the longest row (checked against the dense route on first use, like every
    kernel here) when the dense decode would be large enough for that to pay
    (`ragged_route`), else a dense code and one matmul.
    """
    if rows.device.type == "cpu":
        counts = torch.bincount(rows, minlength=n_rows)
        offsets = torch.cumsum(counts, 0) - counts
        out = F.embedding_bag(cols, W_dec, offsets, per_sample_weights=vals.to(W_dec.dtype), mode="sum")
        return out if b_dec is None else out + b_dec
    if rows.numel() and ragged_route(vals, n_rows, W_dec) == "kernels":
        return _verified("ragged_decode", vals, kernel_ragged_decode, dense_ragged_decode,
                         [rows, cols, vals, n_rows, W_dec, b_dec], canonical=lambda y: y)
    return dense_ragged_decode(rows, cols, vals, n_rows, W_dec, b_dec)


def local_topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    *,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    absolute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """pre = x @ W_enc + b_enc; the top k per row (ReLU'd), or by |pre| with sign kept.

    Returns (vals [N,k], idx [N,k], aux_vals [N,k_aux] | None, aux_idx | None); the aux pair
    is the top k_aux of `pre` among the latents where dead_mask [d_sae] is True (AuxK).
    """
    pre = x @ W_enc + b_enc
    if absolute:
        idx = pre.abs().topk(k, dim=-1, sorted=False).indices
        vals = pre.gather(-1, idx)
    else:
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        vals = vals.relu()
    aux_vals = aux_idx = None
    if k_aux > 0 and dead_mask is not None:
        score = pre.abs() if absolute else pre
        masked = score.masked_fill(~dead_mask, float("-inf"))
        aux_idx = masked.topk(k_aux, dim=-1, sorted=False).indices
        aux_vals = pre.gather(-1, aux_idx)
        if not absolute:
            aux_vals = aux_vals.relu()
    return vals, idx, aux_vals, aux_idx


def sparse_decode(acts, indices, W_dec, b_dec=None):
    """Dispatching sparse decode (see local_sparse_decode for the contract)."""
    if _choose("sparse_decode", acts) == "local":
        return local_sparse_decode(acts, indices, W_dec, b_dec)
    from workbench.kernels import sparse_decode as kernel  # noqa: PLC0415

    return _verified("sparse_decode", acts, kernel, local_sparse_decode, [acts, indices, W_dec, b_dec],
                     canonical=lambda y: y)


def topk_encode(x, W_enc, b_enc, k, *, dead_mask=None, k_aux=0, absolute=False):
    """Dispatching TopK encoder (see local_topk_encode for the contract)."""
    if _choose("topk_encode", x) == "local":
        return local_topk_encode(x, W_enc, b_enc, k, dead_mask=dead_mask, k_aux=k_aux, absolute=absolute)
    from workbench.kernels import topk_encode as kernel  # noqa: PLC0415

    def fast(x_, w_, b_):
        return kernel(x_, w_, b_, k, dead_mask=dead_mask, k_aux=k_aux, absolute=absolute)

    def slow(x_, w_, b_):
        return local_topk_encode(x_, w_, b_, k, dead_mask=dead_mask, k_aux=k_aux, absolute=absolute)

    def canonical(out):
        # codes scattered densely (slot order free); AuxK codes weighted apart from the main ones
        vals, idx, aux_vals, aux_idx = out
        dense = torch.zeros(vals.shape[0], W_enc.shape[1], device=vals.device, dtype=torch.float32)
        dense = dense.scatter_add(1, idx, vals.float())
        if aux_vals is not None and aux_vals.numel():
            dense = dense + 0.5 * torch.zeros_like(dense).scatter_add(1, aux_idx, aux_vals.float())
        return dense

    return _verified("topk_encode", x, fast, slow, [x, W_enc, b_enc], canonical)


# ---------------------------------------------------------------------- decoder-row upkeep
def local_remove_parallel_grad_(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """In place: grad[m] -= <grad[m], weight[m]> weight[m] (grad, weight [d_sae, d_out])."""
    parallel = (grad * weight).sum(dim=1, keepdim=True)
    return grad.sub_(parallel * weight)


def local_normalize_rows_(weight: torch.Tensor) -> torch.Tensor:
    """In place: every row of weight [d_sae, d_out] to unit L2 norm."""
    return weight.div_(weight.norm(dim=1, keepdim=True).clamp_min(1e-12))


def _verified_in_place(op: str, target: torch.Tensor, fast, slow) -> torch.Tensor:
    """Like _verified, for an op that changes `target` in place: on first use per (op, device,
    dtype) both run from the same input and must agree (1e-4 of the largest magnitude: both
    compute in fp32); a kernel that raises or disagrees is dropped for the local version."""
    key = (op, target.device.type, target.dtype)
    if key in _VERIFIED:
        return fast()
    if _CHOICES.get(key) == "local":
        return slow()  # dropped after a failed check (the callers gate on "row_upkeep", not on op)
    original = target.clone()
    try:
        fast()
        by_kernel = target.clone()
        error = None
    except Exception as caught:  # noqa: BLE001 (any kernel failure means: use the local path)
        by_kernel, error = None, f"{type(caught).__name__}: {caught}"
    target.copy_(original)
    slow()
    if error is None:
        diff = float((by_kernel.float() - target.float()).abs().max()) if target.numel() else 0.0
        scale = float(target.float().abs().max()) if target.numel() else 0.0
        if diff <= 1e-4 * max(scale, 1e-6):
            _VERIFIED.add(key)
            log.info("sae: the %s kernel on %s/%s passed its first-use check", op, key[1], key[2])
            return target
        error = f"max abs diff {diff:.3g} (scale {scale:.3g})"
    log.warning("sae: the %s kernel on %s/%s failed its first-use check (%s); using the local version",
                op, key[1], key[2], error)
    _CHOICES[key] = "local"
    return target


def remove_parallel_grad_(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Dispatching in-place removal of each row's parallel gradient (one pass in the kernel)."""
    if _choose("row_upkeep", weight) == "local":
        return local_remove_parallel_grad_(grad, weight)
    from workbench.kernels import remove_parallel_component_ as kernel  # noqa: PLC0415

    return _verified_in_place("remove_parallel_grad", grad, lambda: kernel(grad, weight),
                              lambda: local_remove_parallel_grad_(grad, weight))


def normalize_rows_(weight: torch.Tensor) -> torch.Tensor:
    """Dispatching in-place row normalisation (one pass in the kernel)."""
    if _choose("row_upkeep", weight) == "local":
        return local_normalize_rows_(weight)
    from workbench.kernels import normalize_rows_ as kernel  # noqa: PLC0415

    return _verified_in_place("normalize_rows", weight, lambda: kernel(weight), lambda: local_normalize_rows_(weight))
