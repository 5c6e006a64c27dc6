"""Sparse kernels for the SAE hot paths, each beside its plain-torch reference.

    from workbench.kernels import sparse_decode, topk_encode, use, active_backend

    y = sparse_decode(acts, indices, W_dec, b_dec=None)          # [N, k] codes -> [N, d_out]
    vals, idx, aux_vals, aux_idx = topk_encode(x, W_enc, b_enc, k, dead_mask=None, k_aux=0, absolute=False)
    with use("reference"):                                       # or "triton" / "auto"
        ...
    active_backend("sparse_decode", device, dtype)               # -> "reference" | "triton"
    flat_idx = batch_topk_indices(relu_pre, k * N)               # BatchTopK: the k*N largest of a batch
    remove_parallel_component_(W_dec.grad, W_dec); normalize_rows_(W_dec)   # decoder-row upkeep, in place
    with packed_decoders():                                      # large inference decodes read a packed
        y = sparse_decode(acts, indices, W_dec)                  # copy of W_dec (CUDA; freed at exit)

Each op lives in its own folder, `decode/` and `encode/` (topk_encode's folder is not
named `topk_encode`, which would shadow the function once imported): `reference.py`
(plain torch, fp32 accumulation: the spec), `triton.py` (the kernels and their
launchers), `op.py` (autograd for the reference; torch.library custom op + fake +
autograd for the fast path); `decode/dense.py` runs products with hundreds of slots per
row (AuxK) as GEMMs over the latents named; `decode/packed.py` makes the column-block-major
copies of W_dec that `packed_decoders()` (or `WORKBENCH_KERNELS_PACK=1`) lets large no-grad
decodes read (14-24% faster on the H200 at the benchmark's shapes, for a second copy of W_dec). `batch_topk/` holds only a reference: torch's
top-k beat the custom kernel there. `dispatch.py` picks the backend lazily per (op,
device type, dtype): Triton on CUDA, the reference elsewhere;
`WORKBENCH_KERNELS=reference|triton|auto` or `use(...)` override it. `rows/` holds the
trainer's decoder-row upkeep (one pass each instead of torch's five). `tuning.py` picks
launch configs (timed and cross-checked on first use), `launch.py` launches the
one-token decode kernel without Triton's per-call bookkeeping. Importing this package
registers the torch.library ops and imports neither triton nor torch._dynamo.
"""

from workbench.kernels.api import (
    batch_topk_indices,
    normalize_rows_,
    remove_parallel_component_,
    sparse_decode,
    topk_encode,
)
from workbench.kernels.decode.packed import packed_decoders
from workbench.kernels.dispatch import active_backend, use

__all__ = ["sparse_decode", "topk_encode", "batch_topk_indices", "remove_parallel_component_", "normalize_rows_",
           "use", "active_backend", "packed_decoders"]
