"""Activation sources for the trainer: deterministic, resumable streams of shuffled batches.

A source yields batches as dicts {site: Tensor[batch_size, width]} (one entry per site
it serves, rows aligned across sites: row i of every site comes from the same token).
The stream is a pure function of (seed, step): `batches(batch_size, seed=s, start_step=n)`
starts exactly where an uninterrupted stream would be after n batches, which is what
makes `--resume` end with the same weights as an uninterrupted run.

    TensorSource   rows already in memory (CPU or GPU): one seeded permutation per epoch
    StoreSource    an ActivationStore on disk: read into memory when it fits, else streamed
                   shard-group by shard-group through ActivationStore.iter_batches
    LiveSource     a model and a packed corpus through the engine: a shuffle buffer of
                   `buffer_tokens` rows from contexts drawn in a seeded random order, refilled
                   whole when spent; the contexts of buffer c of epoch e are fixed by the seed,
                   so a resumed run regenerates the same buffer
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Iterator, Mapping, Sequence

import torch

from workbench.errors import UnknownNameError, WorkbenchError

_EPOCH_SALT = 1_000_003


def _epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * _EPOCH_SALT + int(epoch) * 7919 + salt) % (2**63 - 1))


class ActivationSource(ABC):
    """Base class: `sites`, `width(site)`, `batches(...)` and a `description` for metadata
    (model_name, context_size, dataset, exclude_position0: filled into the saved SAE)."""

    sites: tuple[str, ...] = ()
    description: dict[str, Any] = {}

    @abstractmethod
    def width(self, site: str) -> int:
        """Width of the rows of `site`."""

    def check_sites(self, sites: Sequence[str]) -> None:
        for site in sites:
            if site not in self.sites:
                raise UnknownNameError("site in this activation source", site, list(self.sites))

    @abstractmethod
    def batches(
        self, batch_size: int, *, seed: int = 0, start_step: int = 0, device: torch.device | str | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches {site: [batch_size, width]}; batch n depends only on (seed, n)."""


class TensorSource(ActivationSource):
    """Rows held in memory: {site: Tensor[N, width]} (any device; batches stay on it unless moved)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], *, description: dict[str, Any] | None = None):
        if not tensors:
            raise WorkbenchError("TensorSource needs at least one site")
        counts = {site: t.shape[0] for site, t in tensors.items()}
        if len(set(counts.values())) != 1:
            raise WorkbenchError(f"every site needs the same number of rows, got {counts}")
        for site, t in tensors.items():
            if t.dim() != 2:
                raise WorkbenchError(f"{site}: expected rows [N, width], got shape {tuple(t.shape)}")
        self.tensors = dict(tensors)
        self.sites = tuple(tensors)
        self.n_rows = next(iter(counts.values()))
        if self.n_rows == 0:
            raise WorkbenchError("TensorSource got no rows")
        self.description = dict(description or {})

    def width(self, site: str) -> int:
        self.check_sites([site])
        return int(self.tensors[site].shape[1])

    def _perm(self, seed: int, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n_rows, generator=_epoch_generator(seed, epoch))

    def batches(self, batch_size, *, seed=0, start_step=0, device=None):
        if batch_size < 1:
            raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
        position = start_step * batch_size  # row offset in the endless concatenation of epochs
        epoch, offset = divmod(position, self.n_rows)
        perm = self._perm(seed, epoch)
        while True:
            take: list[torch.Tensor] = []
            need = batch_size
            while need:
                piece = perm[offset:offset + need]
                take.append(piece)
                need -= piece.numel()
                offset += piece.numel()
                if offset >= self.n_rows:
                    epoch, offset = epoch + 1, 0
                    perm = self._perm(seed, epoch)
            index = torch.cat(take)
            batch = {}
            for site, rows in self.tensors.items():
                picked = rows[index.to(rows.device)]
                batch[site] = picked if device is None else picked.to(device, non_blocking=True)
            yield batch


class StoreSource(ActivationSource):
    """An ActivationStore (see workbench.engine.store). Read whole into memory when the
    selected sites fit in `memory_limit_bytes`; otherwise streamed epoch by epoch."""

    def __init__(self, store, sites: Sequence[str] | None = None, *, memory_limit_bytes: int = 4 << 30):
        self.store = store
        self.sites = tuple(sites or store.sites)
        for site in self.sites:
            if site not in store.sites:
                raise UnknownNameError("site in the store", site, store.sites)
        cfg = store.config
        self.description = {
            "model_name": store.model_name,
            "context_size": store.context_size,
            "dataset": cfg.get("corpus", ""),
            "exclude_position0": bool(cfg.get("drop_bos", True)),
        }
        element = torch.empty((), dtype=store.dtype).element_size()
        size = sum(store.n_tokens * store.width(site) * element for site in self.sites)
        self._memory = None
        if size <= memory_limit_bytes:
            self._memory = TensorSource({site: store.read(site) for site in self.sites}, description=self.description)

    def width(self, site: str) -> int:
        self.check_sites([site])
        return self.store.width(site)

    def batches(self, batch_size, *, seed=0, start_step=0, device=None):
        if self._memory is not None:
            yield from self._memory.batches(batch_size, seed=seed, start_step=start_step, device=device)
            return
        per_epoch = self.store.n_tokens // batch_size
        if per_epoch < 1:
            raise WorkbenchError(f"the store holds {self.store.n_tokens} rows, fewer than one batch of {batch_size}")
        epoch, skip = divmod(start_step, per_epoch)
        while True:
            # Same seed for every site: the store permutes rows identically, keeping sites aligned.
            streams = [
                self.store.iter_batches(site, batch_size, shuffle=True, seed=seed * _EPOCH_SALT + epoch,
                                        device=device, drop_last=True)
                for site in self.sites
            ]
            for index, rows in enumerate(zip(*streams)):
                if index >= skip:
                    yield dict(zip(self.sites, rows))
            epoch, skip = epoch + 1, 0


class LiveSource(ActivationSource):
    """Activations computed on the fly from a model over a PackedCorpus, through a shuffle buffer."""

    def __init__(
        self,
        model,
        packed,
        sites: Sequence[str],
        *,
        buffer_tokens: int = 65536,
        forward_batch: int = 8,
        drop_bos: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        self.model = model
        self.sites = tuple(model.check_site(s) for s in sites)
        self.tokens = packed.tokens
        if self.tokens.dim() != 2 or self.tokens.shape[0] < 1:
            raise WorkbenchError("the packed corpus has no contexts; use a larger corpus or smaller context")
        self.n_ctx, self.context_size = self.tokens.shape
        self.drop_bos = drop_bos
        self.rows_per_ctx = self.context_size - (1 if drop_bos else 0)
        if self.rows_per_ctx < 1:
            raise WorkbenchError("contexts of one token leave nothing once position 0 is dropped")
        self.ctx_per_buffer = max(1, min(self.n_ctx, buffer_tokens // self.rows_per_ctx))
        self.forward_batch = forward_batch
        self.dtype = dtype
        self.description = {
            "model_name": model.name,
            "context_size": self.context_size,
            "dataset": getattr(packed, "corpus", ""),
            "exclude_position0": drop_bos,
        }

    def width(self, site: str) -> int:
        self.check_sites([site])
        return self.model.site_width(site)

    def _buffer(self, seed: int, epoch: int, chunk: int, device) -> dict[str, torch.Tensor]:
        order = torch.randperm(self.n_ctx, generator=_epoch_generator(seed, epoch, salt=17))
        ctx = order[chunk * self.ctx_per_buffer:(chunk + 1) * self.ctx_per_buffer]
        parts: dict[str, list[torch.Tensor]] = {site: [] for site in self.sites}
        for start in range(0, ctx.numel(), self.forward_batch):
            ids = self.tokens[ctx[start:start + self.forward_batch]].to(self.model.device)
            reads = self.model.read_sites(ids, torch.ones_like(ids), self.sites)  # stops after the last site
            for site in self.sites:
                acts = reads[site]
                if self.drop_bos:
                    acts = acts[:, 1:]
                parts[site].append(acts.reshape(-1, acts.shape[-1]).to(device or "cpu", self.dtype))
        rows = {site: torch.cat(p) for site, p in parts.items()}
        shuffle = torch.randperm(next(iter(rows.values())).shape[0], generator=_epoch_generator(seed, epoch, salt=31 + chunk))
        return {site: r[shuffle.to(r.device)] for site, r in rows.items()}

    def batches(self, batch_size, *, seed=0, start_step=0, device=None):
        if batch_size < 1:
            raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
        rows_per_epoch = self.n_ctx * self.rows_per_ctx
        rows_per_chunk = self.ctx_per_buffer * self.rows_per_ctx
        chunks_per_epoch = math.ceil(self.n_ctx / self.ctx_per_buffer)
        epoch, offset = divmod(start_step * batch_size, rows_per_epoch)
        chunk, skip = divmod(offset, rows_per_chunk)
        pending: dict[str, list[torch.Tensor]] = {site: [] for site in self.sites}
        have = 0
        while True:
            buffer = self._buffer(seed, epoch, chunk, device)
            n = next(iter(buffer.values())).shape[0]
            position = skip
            skip = 0
            while position < n:
                take = min(batch_size - have, n - position)
                for site in self.sites:
                    pending[site].append(buffer[site][position:position + take])
                have += take
                position += take
                if have == batch_size:
                    yield {site: torch.cat(p) if len(p) > 1 else p[0] for site, p in pending.items()}
                    pending = {site: [] for site in self.sites}
                    have = 0
            chunk += 1
            if chunk >= chunks_per_epoch:
                epoch, chunk = epoch + 1, 0
