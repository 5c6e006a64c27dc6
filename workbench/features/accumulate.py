"""Running per-feature statistics for one SAE, updated batch by batch during a harvest.

`FeatureAccumulator.update(codes, tokens, rows, batch_index)` takes the dense codes of a
batch of contexts and folds them into:

    counts       fired [F] (tokens where the latent is non-zero), n_contexts [F],
                 act_sum [F], act_max [F], act_min [F]
    histogram    hist_pos / hist_neg [F, B]: counts of |a| in shared log-spaced bins, the
                 edges fixed from the first batch with activity (values outside the range
                 land in the first or last bin)
    top          the n_top contexts where the latent peaks highest, each with the window of
                 activations around its peak (a per-feature top-k merged batch by batch)
    bottom       signed codes only: the n_top contexts where it is most negative
    reservoir    a uniform sample of the contexts where it fired (the `reservoir_size`
                 smallest of seeded random keys, so the sample is the same however the
                 harvest is split into runs); quantile-interval samples are drawn from it
    co-firing    pair counts C[i, j] = tokens where latents i and j both fire (dense
                 int32 for d_sae <= DENSE_PAIR_LIMIT, coalesced sparse pairs above)
    tokens       per (token id, latent): firing count and activation sum, and the count of
                 each token id, for "which latents fire most on this token"

Shapes: F = d_sae, N = n_top, R = reservoir_size, W = window_before + 1 + window_after.
Every piece of state is a tensor or a number, so `state_dict()` round-trips through
`torch.save` / `torch.load(weights_only=True)` and a harvest resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DENSE_PAIR_LIMIT = 16_384
"""Up to this many latents, co-firing counts live in a dense [F, F] int32 matrix (1 GiB at the limit)."""

MAX_PAIRS_PER_BATCH = 4_000_000
"""Co-firing pairs counted per batch at most; with a large L0 only an evenly spaced subset
of the batch's tokens is counted (the Jaccard index uses the same tokens for its counts)."""

COALESCE_EVERY = 3_000_000
"""Pending (token, latent) entries are merged into the running table past this many."""


@dataclass(frozen=True)
class AccumulatorSpec:
    """The fixed sizes of one feature accumulator (taken from a HarvestConfig and the SAE)."""

    d_sae: int
    """Number of latents F."""
    signed: bool
    """True when codes can be negative (AbsTopK): also keep the most negative contexts."""
    n_top: int
    """Top (and bottom) contexts kept per latent."""
    reservoir_size: int
    """Random activating contexts kept per latent (quantile samples are drawn from these)."""
    window_before: int
    """Tokens kept before the peak in an example window."""
    window_after: int
    """Tokens kept after the peak."""
    hist_bins: int
    """Log-spaced bins of the |activation| histogram."""
    seed: int
    """Seed of the reservoir keys."""

    @property
    def window(self) -> int:
        return self.window_before + 1 + self.window_after


class ExampleList:
    """Per-latent sets of N example contexts, those with the smallest `key` (state tensors [F, N],
    unsorted; empty slots have key +inf)."""

    FIELDS = ("key", "value", "row", "peak", "start", "length", "acts")

    def __init__(self, n_features: int, size: int, window: int):
        self.size, self.window = size, window
        self.key = torch.full((n_features, size), math.inf)
        self.value = torch.zeros(n_features, size)
        self.row = torch.full((n_features, size), -1, dtype=torch.int32)
        self.peak = torch.zeros(n_features, size, dtype=torch.int16)
        self.start = torch.zeros(n_features, size, dtype=torch.int16)
        self.length = torch.zeros(n_features, size, dtype=torch.int16)
        self.acts = torch.zeros(n_features, size, window, dtype=torch.float16)

    def merge(self, new_key: torch.Tensor, value: torch.Tensor, peak: torch.Tensor, rows: torch.Tensor,
              codes: torch.Tensor, before: int) -> None:
        """Keep the N smallest keys among the current entries and one candidate per context.

        new_key, value, peak: [B, F] (key +inf = not a candidate); rows: [B] context rows;
        codes: [B, T, F] for the windows of newly kept entries. Slots are not kept sorted:
        a new entry takes the slot of an entry it evicts, so only new entries are written
        (the readers sort by key).
        """
        size = self.size
        keys = torch.cat([self.key, new_key.T], dim=1)  # [F, N + B]
        kept = keys.topk(size, dim=1, largest=False, sorted=False).indices
        keep = torch.zeros_like(keys, dtype=torch.bool).scatter_(1, kept, True) & torch.isfinite(keys)
        new_feat, new_batch = keep[:, size:].nonzero(as_tuple=True)  # ordered by latent
        if new_feat.numel() == 0:
            return
        free_feat, free_slot = (~keep[:, :size]).nonzero(as_tuple=True)  # evicted or empty slots, by latent
        n_new = torch.bincount(new_feat, minlength=keys.shape[0])
        starts = torch.cumsum(torch.bincount(free_feat, minlength=keys.shape[0]), 0) - torch.bincount(
            free_feat, minlength=keys.shape[0])
        rank = torch.arange(free_feat.numel()) - starts[free_feat]
        use = rank < n_new[free_feat]  # a latent has at least as many free slots as new entries
        feat, slot = free_feat[use], free_slot[use]
        assert torch.equal(feat, new_feat), "slot bookkeeping out of step"
        batch = new_batch
        peak_pos = peak[batch, feat].long()
        T = codes.shape[1]
        start = (peak_pos - before).clamp(min=0)
        end = (peak_pos + (self.window - before)).clamp(max=T)
        positions = start[:, None] + torch.arange(self.window)[None, :]
        inside = positions < end[:, None]
        window_acts = codes[batch[:, None], positions.clamp(max=T - 1), feat[:, None]] * inside
        self.key[feat, slot] = keys[feat, size + batch]
        self.value[feat, slot] = value[batch, feat]
        self.row[feat, slot] = rows[batch].to(torch.int32)
        self.peak[feat, slot] = peak_pos.to(torch.int16)
        self.start[feat, slot] = start.to(torch.int16)
        self.length[feat, slot] = (end - start).to(torch.int16)
        self.acts[feat, slot] = window_acts.to(torch.float16)

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": getattr(self, name) for name in self.FIELDS}

    def load(self, prefix: str, state: dict) -> None:
        for name in self.FIELDS:
            setattr(self, name, state[f"{prefix}.{name}"])


class PairCounts:
    """Co-firing counts C[i, j] over tokens, dense [F, F] int32 or coalesced sparse pairs."""

    def __init__(self, n_features: int):
        self.n = n_features
        self.dense = n_features <= DENSE_PAIR_LIMIT
        if self.dense:
            self.matrix = torch.zeros(n_features * n_features, dtype=torch.int32)
        else:
            self.keys = torch.zeros(0, dtype=torch.int64)
            self.counts = torch.zeros(0, dtype=torch.int32)
            self.pending: list[torch.Tensor] = []
            self.n_pending = 0

    def add(self, active_idx: torch.Tensor, active: torch.Tensor) -> None:
        """Count pairs among each token's active latents: active_idx / active [N, K]."""
        n_tokens, k = active_idx.shape
        if n_tokens == 0 or k == 0:
            return
        if n_tokens * k * k > MAX_PAIRS_PER_BATCH:  # large L0: count an evenly spaced token subset
            keep = max(1, MAX_PAIRS_PER_BATCH // (k * k))
            chosen = torch.linspace(0, n_tokens - 1, keep).round().long()
            active_idx, active = active_idx[chosen], active[chosen]
        pair_ok = (active[:, :, None] & active[:, None, :]).reshape(-1)
        flat = (active_idx[:, :, None] * self.n + active_idx[:, None, :]).reshape(-1)[pair_ok]
        if self.dense:
            self.matrix.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        else:
            self.pending.append(flat)
            self.n_pending += flat.numel()
            if self.n_pending > COALESCE_EVERY:
                self.coalesce()

    def coalesce(self) -> None:
        if self.dense or not self.pending:
            return
        keys = torch.cat([self.keys, *self.pending])
        counts = torch.cat([self.counts, torch.ones(keys.numel() - self.keys.numel(), dtype=torch.int32)])
        self.keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        self.counts = torch.zeros(self.keys.numel(), dtype=torch.int32).index_add_(0, inverse, counts)
        self.pending, self.n_pending = [], 0

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Dense counts [stop - start, F] for latents start..stop-1 (float32)."""
        if self.dense:
            return self.matrix[start * self.n:stop * self.n].view(stop - start, self.n).float()
        self.coalesce()
        lo = torch.searchsorted(self.keys, torch.tensor(start * self.n))
        hi = torch.searchsorted(self.keys, torch.tensor(stop * self.n))
        keys, counts = self.keys[lo:hi], self.counts[lo:hi]
        out = torch.zeros((stop - start) * self.n)
        out[keys - start * self.n] = counts.float()
        return out.view(stop - start, self.n)

    def diagonal(self) -> torch.Tensor:
        """[F] tokens counted per latent (the pairs' own counts)."""
        if self.dense:
            return self.matrix.view(self.n, self.n).diagonal().float()
        self.coalesce()
        out = torch.zeros(self.n)
        diag = self.keys % (self.n + 1) == 0
        out[self.keys[diag] // (self.n + 1)] = self.counts[diag].float()
        return out

    def state(self) -> dict[str, torch.Tensor]:
        if self.dense:
            return {"pairs.matrix": self.matrix}
        self.coalesce()
        return {"pairs.keys": self.keys, "pairs.counts": self.counts}

    def load(self, state: dict) -> None:
        if self.dense:
            self.matrix = state["pairs.matrix"]
        else:
            self.keys, self.counts = state["pairs.keys"], state["pairs.counts"]


class TokenFeatureCounts:
    """Per (token id, latent): times fired and activation sum; plus each token id's count."""

    def __init__(self, n_features: int):
        self.n = n_features
        self.keys = torch.zeros(0, dtype=torch.int64)  # token * F + feature, sorted
        self.fired = torch.zeros(0, dtype=torch.int32)
        self.sums = torch.zeros(0, dtype=torch.float64)
        self.token_ids = torch.zeros(0, dtype=torch.int64)
        self.token_n = torch.zeros(0, dtype=torch.int64)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.n_pending = 0

    def add(self, tokens: torch.Tensor, feature: torch.Tensor, value: torch.Tensor, seen_tokens: torch.Tensor) -> None:
        """tokens/feature/value [M]: the non-zero codes; seen_tokens [n]: every counted token id."""
        self.pending.append((tokens * self.n + feature, value.double()))
        self.n_pending += tokens.numel()
        ids, n = torch.unique(seen_tokens, return_counts=True)
        merged_ids = torch.cat([self.token_ids, ids])
        merged_n = torch.cat([self.token_n, n])
        self.token_ids, inverse = torch.unique(merged_ids, sorted=True, return_inverse=True)
        self.token_n = torch.zeros(self.token_ids.numel(), dtype=torch.int64).index_add_(0, inverse, merged_n)
        if self.n_pending > COALESCE_EVERY:
            self.coalesce()

    def coalesce(self) -> None:
        if not self.pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self.pending])
        sums = torch.cat([self.sums] + [v for _, v in self.pending])
        fired = torch.cat([self.fired, torch.ones(keys.numel() - self.keys.numel(), dtype=torch.int32)])
        self.keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        self.fired = torch.zeros(self.keys.numel(), dtype=torch.int32).index_add_(0, inverse, fired)
        self.sums = torch.zeros(self.keys.numel(), dtype=torch.float64).index_add_(0, inverse, sums)
        self.pending, self.n_pending = [], 0

    def state(self) -> dict[str, torch.Tensor]:
        self.coalesce()
        return {"tokfeat.keys": self.keys, "tokfeat.fired": self.fired, "tokfeat.sums": self.sums,
                "tokfeat.token_ids": self.token_ids, "tokfeat.token_n": self.token_n}

    def load(self, state: dict) -> None:
        self.keys, self.fired, self.sums = state["tokfeat.keys"], state["tokfeat.fired"], state["tokfeat.sums"]
        self.token_ids, self.token_n = state["tokfeat.token_ids"], state["tokfeat.token_n"]


class FeatureAccumulator:
    """Everything a harvest records about one SAE's latents, updated one batch at a time."""

    def __init__(self, spec: AccumulatorSpec):
        self.spec = spec
        F, N, W = spec.d_sae, spec.n_top, spec.window
        self.n_tokens = 0
        self.fired = torch.zeros(F, dtype=torch.int64)
        self.n_contexts = torch.zeros(F, dtype=torch.int64)
        self.act_sum = torch.zeros(F, dtype=torch.float64)
        self.act_max = torch.zeros(F)
        self.act_min = torch.zeros(F)
        self.hist_edges = torch.zeros(0)
        self.hist_pos = torch.zeros(F, spec.hist_bins, dtype=torch.int32)
        self.hist_neg = torch.zeros(F, spec.hist_bins, dtype=torch.int32)
        self.top = ExampleList(F, N, W)
        self.bottom = ExampleList(F, N, W) if spec.signed else None
        self.reservoir = ExampleList(F, spec.reservoir_size, W)
        self.pairs = PairCounts(F)
        self.token_features = TokenFeatureCounts(F)

    @torch.no_grad()
    def update(self, codes: torch.Tensor, tokens: torch.Tensor, counted: torch.Tensor, rows: torch.Tensor,
               batch_index: int) -> None:
        """Fold in one batch.

        codes: [B, T, F] float32 (zero where `counted` is False); tokens: [B, T] token ids;
        counted: [B, T] bool, the tokens that count for the statistics (real tokens, minus
        position 0 when the harvest skips it); rows: [B] global context indices.
        """
        spec = self.spec
        B, T, F = codes.shape
        self.n_tokens += int(counted.sum())
        nz = codes.nonzero(as_tuple=True)
        values = codes[nz]
        feat = nz[2]
        self.fired += torch.bincount(feat, minlength=F)
        self.act_sum.index_add_(0, feat, values.double())
        if values.numel():
            self.act_max = torch.maximum(self.act_max, codes.amax(dim=(0, 1)))
            self.act_min = torch.minimum(self.act_min, codes.amin(dim=(0, 1)))
        self._histogram(feat, values)
        self.token_features.add(tokens[nz[0], nz[1]], feat, values, tokens[counted])

        # per-context peaks -> top / bottom lists and the reservoir
        peak_val, peak_pos = codes.max(dim=1)  # [B, F]
        fired_ctx = (codes != 0).any(dim=1)  # [B, F]
        self.n_contexts += fired_ctx.sum(0)
        inf = torch.tensor(math.inf)
        before = spec.window_before
        self.top.merge(torch.where(peak_val > 0, -peak_val, inf), peak_val, peak_pos, rows, codes, before)
        if self.bottom is not None:
            low_val, low_pos = codes.min(dim=1)
            self.bottom.merge(torch.where(low_val < 0, low_val, inf), low_val, low_pos, rows, codes, before)
            extreme_pos = torch.where(peak_val >= -low_val, peak_pos, low_pos)
            extreme_val = torch.where(peak_val >= -low_val, peak_val, low_val)
        else:
            extreme_pos, extreme_val = peak_pos, peak_val
        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + batch_index)
        keys = torch.rand(B, F, generator=gen)
        self.reservoir.merge(torch.where(fired_ctx, keys, inf), extreme_val, extreme_pos, rows, codes, before)

        # co-firing among each token's active latents
        flat = codes.reshape(B * T, F)
        l0 = (flat != 0).sum(-1)
        k = int(l0.max()) if l0.numel() else 0
        if k > 0:
            top_abs, idx = flat.abs().topk(k, dim=-1)
            self.pairs.add(idx, top_abs > 0)

    def _histogram(self, feat: torch.Tensor, values: torch.Tensor) -> None:
        bins = self.spec.hist_bins
        if values.numel() == 0:
            return
        magnitude = values.abs().float()
        if self.hist_edges.numel() == 0:  # calibrate once: generous range around the first batch
            low = float(torch.quantile(magnitude[:1_000_000], 0.001)) / 10.0
            high = float(magnitude.max()) * 20.0
            low = max(low, high * 1e-7, 1e-12)
            self.hist_edges = torch.logspace(math.log10(low), math.log10(high), bins + 1)
        index = (torch.bucketize(magnitude, self.hist_edges) - 1).clamp(0, bins - 1)
        flat = feat * bins + index
        F = self.spec.d_sae
        positive = values > 0
        self.hist_pos += torch.bincount(flat[positive], minlength=F * bins).view(F, bins).int()
        if self.spec.signed:
            self.hist_neg += torch.bincount(flat[~positive], minlength=F * bins).view(F, bins).int()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {
            "n_tokens": self.n_tokens, "fired": self.fired, "n_contexts": self.n_contexts,
            "act_sum": self.act_sum, "act_max": self.act_max, "act_min": self.act_min,
            "hist_edges": self.hist_edges, "hist_pos": self.hist_pos, "hist_neg": self.hist_neg,
        }
        state.update(self.top.state("top"))
        if self.bottom is not None:
            state.update(self.bottom.state("bottom"))
        state.update(self.reservoir.state("reservoir"))
        state.update(self.pairs.state())
        state.update(self.token_features.state())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.n_tokens = int(state["n_tokens"])
        for name in ("fired", "n_contexts", "act_sum", "act_max", "act_min", "hist_edges", "hist_pos", "hist_neg"):
            setattr(self, name, state[name])
        self.top.load("top", state)
        if self.bottom is not None:
            self.bottom.load("bottom", state)
        self.reservoir.load("reservoir", state)
        self.pairs.load(state)
        self.token_features.load(state)
