"""Turn a finished FeatureAccumulator into the rows of a feature store.

Derived here, once per harvest (F = d_sae):
- per-latent summary rows (density, max/min/mean activation, contexts, the top token);
- example windows: top contexts, most negative ones (signed codes) and samples from
  activation quantile intervals of the reservoir (top contexts excluded), pointing into
  the few corpus contexts they come from, with document provenance;
- logit effects: the decoder rows through the final norm and unembedding
  (`Model.final_logits`), top and bottom n, when the SAE writes a residual-width site;
- neighbours: nearest decoder rows by cosine, and co-firing latents by Jaccard index;
- 2-D UMAP coordinates of the decoder rows (cosine metric, seeded);
- features by token: for each token id, the latents with the largest mean activation on it;
- the decoded text of every referenced token, and each latent's top windows as text
  for full-text search.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from workbench import sites as site_grammar
from workbench.features.accumulate import ExampleList, FeatureAccumulator
from workbench.features.codec import pack_arrays
from workbench.features.schema import FTS_AFTER, FTS_BEFORE, FTS_WINDOWS

log = logging.getLogger("workbench.features")

KIND_TOP, KIND_QUANTILE, KIND_BOTTOM = 0, 1, 2
NO_INTERVAL = 255


@dataclass
class StoreContent:
    """Everything the writer puts into a store (see schema.py for the layouts)."""

    features: dict[str, np.ndarray]
    """Columns of the features table, each [F]."""
    cards: list[tuple[int, bytes]]
    """(feature, card blob) rows."""
    token_features: list[tuple[int, int, bytes, bytes, bytes]]
    """(token id, count, features, mean_act, frac) with raw little-endian arrays (schema.py)."""
    vocab: dict[int, str]
    """token id -> decoded text, for every id the store refers to."""
    blobs: dict[str, bytes]
    """Named store-level blobs (context_tokens, hist_edges, umap)."""
    fts: list[tuple[int, str]]
    """(feature, text of its top windows) for full-text search."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Store-level figures: dead and dense fractions, logits computed, ..."""


def finalize(acc: FeatureAccumulator, model, sae, packed, config, *, progress: bool = False) -> StoreContent:
    """Compute every derived table from the accumulator (see the module docstring)."""
    F = acc.spec.d_sae

    def say(step: str) -> None:  # finalising an 8k-latent SAE takes a minute or two: say what runs
        if progress:
            print(f"finalise {sae.cfg.site} ({F} latents): {step}", file=sys.stderr, flush=True)

    say("examples")
    examples = _examples(acc, config)
    rows = np.unique(np.concatenate([e["row"] for e in examples.values()] or [np.zeros(0, np.int32)]))
    tokens_np = packed.tokens.numpy()
    context_tokens = tokens_np[rows] if rows.size else np.zeros((0, packed.context_size), np.int64)

    say("logit effects")
    logits = _logit_effects(model, sae, config.n_logits)
    say("neighbours")
    decoder_ids, decoder_cos = _decoder_neighbours(sae, config.n_neighbours)
    cofire_ids, cofire_jac = _cofire_neighbours(acc, config.n_neighbours)
    say("features by token, cards")
    token_rows = _token_features(acc, config)

    fired = acc.fired.numpy()
    top_token = np.full(F, -1, dtype=np.int64)
    hist_pos, hist_neg = acc.hist_pos.numpy(), acc.hist_neg.numpy()
    referenced: set[int] = set(np.unique(context_tokens).tolist())
    referenced.update(row[0] for row in token_rows)
    cards = []
    for f in range(F):
        ex = examples.get(f)
        if ex is not None:
            best = int(np.argmax(np.abs(ex["value"]) * (ex["kind"] != KIND_QUANTILE)))
            top_token[f] = int(tokens_np[ex["row"][best], ex["peak"][best]])
            arrays = {f"ex_{name}": values for name, values in ex.items()}
            arrays["ex_row"] = np.searchsorted(rows, ex["row"])
        else:
            arrays = _empty_examples(acc.spec.window)
        arrays.update(hist_pos=hist_pos[f], hist_neg=hist_neg[f], nb_decoder_ids=decoder_ids[f],
                      nb_decoder_cos=decoder_cos[f], nb_cofire_ids=cofire_ids[f], nb_cofire_jaccard=cofire_jac[f])
        if logits is not None:
            arrays.update(logits[f])
            referenced.update(logits[f]["logit_top_ids"].tolist())
            referenced.update(logits[f]["logit_bottom_ids"].tolist())
        cards.append((f, pack_arrays(_compact(arrays))))
    vocab = _decode_vocab(model.tokenizer, sorted(referenced))
    fts_rows = _fts_rows(examples, tokens_np, vocab)

    act_sum = acc.act_sum.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_act = np.where(fired > 0, act_sum / np.maximum(fired, 1), np.nan)
    n_tokens = max(acc.n_tokens, 1)
    features = {
        "feature": np.arange(F), "n_fired": fired, "density": fired / n_tokens,
        "max_act": acc.act_max.numpy().astype(np.float64), "min_act": acc.act_min.numpy().astype(np.float64),
        "mean_act": mean_act, "n_contexts": acc.n_contexts.numpy(), "top_token": top_token,
    }
    blobs = {
        "context_tokens": pack_arrays(_compact({
            "tokens": context_tokens, "doc": packed.doc.numpy()[rows].astype(np.int32),
            "pos": packed.pos.numpy()[rows].astype(np.int32)}, keys=("tokens",))),
        "hist_edges": pack_arrays({"edges": acc.hist_edges.numpy().astype(np.float32)}),
    }
    if config.umap:
        say("UMAP of the decoder directions")
    umap_xy = _umap(sae, config) if config.umap else None
    if umap_xy is not None:
        blobs["umap"] = pack_arrays({"xy": umap_xy})
    stats = {
        "d_sae": F, "n_tokens": acc.n_tokens, "dead_frac": float((fired == 0).mean()),
        "dense_frac": float((fired / n_tokens > 0.1).mean()), "logits": logits is not None,
        "umap": umap_xy is not None, "context_rows": int(rows.size), "token_entries": len(token_rows),
        "cofire_sampled": not acc.pairs.dense,
    }
    return StoreContent(features=features, cards=cards, token_features=token_rows, vocab=vocab, blobs=blobs,
                        fts=fts_rows, stats=stats)


_ID_ARRAYS = ("ex_row", "ex_start", "ex_length", "ex_peak", "logit_top_ids", "logit_bottom_ids",
              "nb_decoder_ids", "nb_cofire_ids")


def _compact(arrays: dict[str, np.ndarray], keys: tuple[str, ...] = _ID_ARRAYS) -> dict[str, np.ndarray]:
    """Store non-negative id arrays in the smallest unsigned dtype that holds them."""
    out = dict(arrays)
    for key in keys:
        if key in out:
            values = np.asarray(out[key])
            top = int(values.max()) if values.size else 0
            dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
            out[key] = values.astype(dtype)
    return out


def _fts_rows(examples: dict[int, dict[str, np.ndarray]], tokens_np: np.ndarray,
              vocab: dict[int, str]) -> list[tuple[int, str]]:
    """(feature, text) for full-text search: the core of each latent's top (and bottom) windows."""
    rows = []
    for f, ex in examples.items():
        windows = []
        for i in np.flatnonzero(ex["kind"] != KIND_QUANTILE)[:FTS_WINDOWS]:
            peak, row = int(ex["peak"][i]), int(ex["row"][i])
            ids = tokens_np[row, max(0, peak - FTS_BEFORE):peak + FTS_AFTER + 1]
            windows.append("".join(vocab.get(int(t), "") for t in ids))
        if windows:
            rows.append((f, " … ".join(windows)))
    return rows


# ---------------------------------------------------------------------------- examples
def _valid(lst: ExampleList) -> np.ndarray:
    return torch.isfinite(lst.key).numpy()


def _examples(acc: FeatureAccumulator, config) -> dict[int, dict[str, np.ndarray]]:
    """Per latent: its top, bottom and quantile-sample examples as column arrays."""
    lists = [(KIND_TOP, acc.top)] + ([(KIND_BOTTOM, acc.bottom)] if acc.bottom is not None else [])
    arrays = {kind: {name: getattr(lst, name).numpy() for name in ExampleList.FIELDS} for kind, lst in lists}
    valid = {kind: _valid(lst) for kind, lst in lists}
    reservoir = {name: getattr(acc.reservoir, name).numpy() for name in ExampleList.FIELDS}
    res_valid = _valid(acc.reservoir)
    per_interval = config.n_quantile // config.n_intervals
    out: dict[int, dict[str, np.ndarray]] = {}
    for f in np.flatnonzero(res_valid.any(1) | np.any([v.any(1) for v in valid.values()], axis=0)):
        parts = []
        taken_rows: set[int] = set()
        for kind, _ in lists:
            keep = valid[kind][f]
            if keep.any():
                order = np.flatnonzero(keep)[np.argsort(arrays[kind]["key"][f][keep], kind="stable")]
                part = {name: arrays[kind][name][f][order] for name in ExampleList.FIELDS[1:]}
                part["kind"] = np.full(int(keep.sum()), kind, np.uint8)
                part["interval"] = np.full(int(keep.sum()), NO_INTERVAL, np.uint8)
                parts.append(part)
                taken_rows.update(part["row"].tolist())
        if per_interval:
            keep = res_valid[f] & ~np.isin(reservoir["row"][f], list(taken_rows))
            if keep.any():
                sample = {name: reservoir[name][f][keep] for name in ExampleList.FIELDS[1:]}
                order = np.argsort(np.abs(sample["value"]), kind="stable")
                chosen, intervals = [], []
                groups = np.array_split(order, min(config.n_intervals, order.size))
                for interval, group in reversed(list(enumerate(groups))):  # highest interval first
                    picks = np.unique(np.linspace(0, group.size - 1, min(per_interval, group.size)).round().astype(int))
                    chosen.extend(group[picks][::-1].tolist())
                    intervals.extend([interval] * picks.size)
                part = {name: values[chosen] for name, values in sample.items()}
                part["kind"] = np.full(len(chosen), KIND_QUANTILE, np.uint8)
                part["interval"] = np.array(intervals, np.uint8)
                parts.append(part)
        if parts:
            out[int(f)] = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    for ex in out.values():
        ex["value"] = ex["value"].astype(np.float16)  # display precision; exact extremes live in features
        ex["acts"] = ex["acts"].astype(np.float16)
        ex["peak"] = ex["peak"].astype(np.int64)
        ex["row"] = ex["row"].astype(np.int64)
    return out


def _empty_examples(window: int) -> dict[str, np.ndarray]:
    empty = np.zeros(0, np.uint8)
    return {"ex_value": np.zeros(0, np.float16), "ex_row": empty, "ex_peak": empty, "ex_start": empty,
            "ex_length": empty, "ex_acts": np.zeros((0, window), np.float16), "ex_kind": empty,
            "ex_interval": empty}


# ---------------------------------------------------------------------------- logits and neighbours
def writes_residual(model, sae) -> bool:
    """True when the SAE's output site has residual width, so its decoder rows have logit effects."""
    site = sae.cfg.output_site
    parsed = site_grammar.check_site(site, model.n_layers)
    return (model.has_logits and not parsed.is_pattern and parsed.kind != "mlp.hook_post"
            and sae.W_dec.shape[1] == model.d_model)


@torch.no_grad()
def _logit_effects(model, sae, n: int, chunk: int = 256) -> list[dict[str, np.ndarray]] | None:
    if not writes_residual(model, sae):
        log.info("no logit effects: %s does not write a residual-width site", sae.cfg.output_site)
        return None
    n = min(n, model.vocab_size)
    out = []
    W = sae.W_dec.detach()
    for start in range(0, W.shape[0], chunk):
        logits = model.final_logits(W[start:start + chunk].float()).float().cpu()
        top_v, top_i = logits.topk(n, dim=-1)
        bot_v, bot_i = logits.topk(n, dim=-1, largest=False)
        for r in range(logits.shape[0]):
            out.append({"logit_top_ids": top_i[r].numpy(), "logit_top": top_v[r].numpy().astype(np.float16),
                        "logit_bottom_ids": bot_i[r].numpy(), "logit_bottom": bot_v[r].numpy().astype(np.float16)})
    return out


@torch.no_grad()
def _decoder_neighbours(sae, n: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """[F, n] ids and cosines of the nearest other decoder rows."""
    W = sae.W_dec.detach().float().cpu()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    F = W.shape[0]
    n = min(n, F - 1)
    ids = np.zeros((F, max(n, 0)), np.int64)
    cos = np.zeros((F, max(n, 0)), np.float16)
    if n <= 0:
        return ids, cos
    for start in range(0, F, chunk):
        sims = W[start:start + chunk] @ W.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -float("inf")
        values, index = sims.topk(n, dim=-1)
        ids[start:start + chunk], cos[start:start + chunk] = index.numpy(), values.numpy().astype(np.float16)
    return ids, cos


@torch.no_grad()
def _cofire_neighbours(acc: FeatureAccumulator, n: int, chunk: int = 1024):
    """Per latent: the latents with the largest Jaccard index of firing sets (0 entries dropped)."""
    F = acc.spec.d_sae
    n = min(n, F - 1)
    diag = acc.pairs.diagonal()
    ids_out, jac_out = [], []
    for start in range(0, F, chunk):
        stop = min(start + chunk, F)
        both = acc.pairs.rows(start, stop)
        union = diag[start:stop, None] + diag[None, :] - both
        jac = both / union.clamp_min(1)
        rows = torch.arange(stop - start)
        jac[rows, rows + start] = -1.0
        values, index = jac.topk(max(n, 0), dim=-1) if n > 0 else (torch.zeros(stop - start, 0), torch.zeros(stop - start, 0, dtype=torch.long))
        for r in range(stop - start):
            keep = values[r] > 0
            ids_out.append(index[r][keep].numpy())
            jac_out.append(values[r][keep].numpy().astype(np.float16))
    return ids_out, jac_out


def token_feature_dtype(d_sae: int) -> str:
    """The dtype of latent ids in token_features rows."""
    return "<u2" if d_sae <= 65536 else "<u4"


def _token_features(acc: FeatureAccumulator, config) -> list[tuple[int, int, bytes, bytes, bytes]]:
    """Rows (token, count, features, mean_act, frac): the latents of largest |mean activation| per token."""
    tf = acc.token_features
    tf.coalesce()
    F = acc.spec.d_sae
    if tf.keys.numel() == 0:
        return []
    token = (tf.keys // F).numpy()
    feature = (tf.keys % F).numpy()
    ids, counts = tf.token_ids.numpy(), tf.token_n.numpy()
    count = counts[np.searchsorted(ids, token)]
    mean = tf.sums.numpy() / count
    frac = tf.fired.numpy() / count
    keep = count >= config.min_token_count
    token, feature, mean, frac, count = token[keep], feature[keep], mean[keep], frac[keep], count[keep]
    order = np.lexsort((-np.abs(mean), token))
    token, feature, mean, frac, count = token[order], feature[order], mean[order], frac[order], count[order]
    starts = np.flatnonzero(np.r_[True, token[1:] != token[:-1]])
    ends = np.r_[starts[1:], token.size]
    id_dtype = token_feature_dtype(F)
    rows = []
    for s, e in zip(starts, ends):
        e = min(e, s + config.n_token_features)
        rows.append((int(token[s]), int(count[s]), feature[s:e].astype(id_dtype).tobytes(),
                     mean[s:e].astype("<f2").tobytes(), frac[s:e].astype("<f2").tobytes()))
    return rows


def _decode_vocab(tokenizer, ids: list[int]) -> dict[int, str]:
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return dict(zip(ids, texts))


def _umap(sae, config) -> np.ndarray | None:
    """[F, 2] float32 UMAP of the unit decoder rows (None for fewer than 4 latents)."""
    W = sae.W_dec.detach().float().cpu()
    F = W.shape[0]
    if F < 4:
        return None
    import warnings

    import umap  # imported here: its first import compiles numba code (~15 s)

    W = (W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; small-n spectral notes
        reducer = umap.UMAP(n_components=2, n_neighbors=min(config.umap_neighbors, F - 1), metric="cosine",
                            min_dist=0.1, random_state=config.seed, init="spectral" if F > 64 else "random")
        xy = reducer.fit_transform(W)
    return np.asarray(xy, dtype=np.float32)
