"""Column-block-major copies of decoders, for large decodes that need no gradient (inference, CUDA).

The tiles kernel (`triton._gather_tiles_kernel`) works through the output one block of
PACK_WIDTH columns at a time over the whole GPU, so that the row segments of one column
block stay in L2 for the tokens that name them again. In a row-major W_dec [d_sae, d_in]
those segments (256 B at bf16) lie d_in x 2 bytes apart across the whole table (1 GB at
d_sae 131072, d_in 4096); in the packed copy [ceil(d_in / PACK_WIDTH), d_sae, PACK_WIDTH]
one column block is one contiguous range (34 MB there). Same kernel, same launch configs,
measured on the H200 (`bench/decode_gather_probe.py`, bench/results/h200-run6): 0.389 ->
0.336 ms at N 4096, k 64 (16x dense), 1.35 -> 1.03 ms at N 16384 (22x dense), and gathers
from a table that fits in L2 at 8.2 TB/s against 5.7 (92% of the SMs' streaming read rate
from L2, against 64%).

The copy costs memory (a second W_dec) and time (about 1.3 ms per GB), and it is only right
while W_dec keeps the values it was copied from. So packing is opt-in:

    with packed_decoders():          # e.g. evaluate_sae; the copies made inside are freed at exit
        for batch in batches:
            y = sparse_decode(acts, idx, W_dec)

or `WORKBENCH_KERNELS_PACK=1` for the whole process (read at the first decode that could
pack; `dispatch.reset()` reads it again). Inside, a decode that needs no gradient, has at
least PACK_MIN_ROWS rows and a table of at least PACK_MIN_BYTES (smaller ones stay in L2
either way) packs W_dec once, when the device keeps PACK_HEADROOM of its memory free after
the copy; later decodes reuse the copy while W_dec's storage, shape, strides and version are
unchanged, and pack again after a change. In-place torch ops and the workbench's own
weight upkeep bump the version; writes through `.data` (or any alias with its own version
counter) do not, and would leave a stale copy: don't change weights that way inside the
scope. A gradient-path decode of weights that changed drops their old copy.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Iterator

import torch

PACK_WIDTH = 128
"""Columns per block of the packed layout: the tiles kernel's BLOCK_D for packed tables."""
PACK_MIN_ROWS = 512
PACK_MIN_BYTES = 64 * 2**20
PACK_HEADROOM = 0.10
"""Fraction of the device's memory that must stay free after the copy is made."""
ENV_VAR = "WORKBENCH_KERNELS_PACK"

_ATTRIBUTE = "_workbench_packed_decoder"
_env: list[bool] = []
_local = threading.local()


def _scopes() -> list[list]:
    scopes = getattr(_local, "scopes", None)
    if scopes is None:
        scopes = _local.scopes = []
    return scopes


@contextlib.contextmanager
def packed_decoders() -> Iterator[None]:
    """Large no-grad decodes inside the block read packed copies of their decoders (made on
    first use); the copies made inside are freed when the block ends. Thread-local, nestable."""
    made: list = []
    _scopes().append(made)
    try:
        yield
    finally:
        _scopes().pop()
        for reference in made:
            W = reference()
            if W is not None:
                release(W)


def enabled() -> bool:
    """True inside `packed_decoders()` or with $WORKBENCH_KERNELS_PACK=1 (read once; `reset()` forgets it)."""
    if _scopes():
        return True
    if not _env:
        _env.append((os.environ.get(ENV_VAR) or "0").strip().lower() in ("1", "true", "on", "yes"))
    return _env[0]


def reset() -> None:
    _env.clear()


def pack_rows(W: torch.Tensor, width: int = PACK_WIDTH) -> torch.Tensor:
    """[M, D] (any strides) -> [ceil(D / width), M, width] contiguous; block c holds columns
    c * width .. (c + 1) * width - 1, the last one zero-filled past D."""
    n_rows, n_cols = W.shape
    full = n_cols // width
    blocks = -(-n_cols // width)
    packed = (W.new_zeros if blocks > full else W.new_empty)((blocks, n_rows, width))
    if full:
        packed[:full].copy_(W[:, : full * width].unflatten(1, (full, width)).transpose(0, 1))
    if blocks > full:
        packed[full, :, : n_cols - full * width].copy_(W[:, full * width:])
    return packed


def _identity(W: torch.Tensor) -> tuple:
    return (W.untyped_storage().data_ptr(), W.storage_offset(), tuple(W.shape), W.stride(), W.dtype, W._version)


def _room_for(W: torch.Tensor) -> bool:
    free, total = torch.cuda.mem_get_info(W.device)
    return free - W.numel() * W.element_size() >= PACK_HEADROOM * total


def packed_table(W: torch.Tensor, n_rows: int, check_room=_room_for) -> torch.Tensor | None:
    """The packed copy of W to decode n_rows rows with, or None (decode W as it is).

    None unless packing is on (`enabled()`) and the decode is large enough; makes the copy
    when W has none for its current state and `check_room(W)` says the device has room.
    """
    if n_rows < PACK_MIN_ROWS or W.numel() * W.element_size() < PACK_MIN_BYTES or W.shape[1] < 2 * PACK_WIDTH:
        return None
    if not enabled() or W.is_inference():
        return None  # inference tensors keep no version counter: a change could not be seen
    identity = _identity(W)
    state = getattr(W, _ATTRIBUTE, None)
    if state is not None and state[0] == identity:
        return state[1]
    release(W)  # a copy of an older state: free it before making the new one
    if not check_room(W):
        return None
    copy = pack_rows(W)
    setattr(W, _ATTRIBUTE, (identity, copy))
    if _scopes():
        _scopes()[-1].append(weakref.ref(W))
    return copy


def release(W: torch.Tensor) -> None:
    """Drop W's packed copy now (instead of at the end of its scope, when W changes, or when W is freed)."""
    if hasattr(W, _ATTRIBUTE):
        delattr(W, _ATTRIBUTE)


def drop_stale(W: torch.Tensor) -> None:
    """Drop W's packed copy if W changed since it was made (a training step after an evaluation:
    the copy must not hold a second W_dec's memory through training)."""
    state = getattr(W, _ATTRIBUTE, None)
    if state is not None and state[0] != _identity(W):
        release(W)
