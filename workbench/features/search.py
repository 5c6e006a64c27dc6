"""Finding latents: by token, by a text run through model + SAE, by free text (FTS5), and a
latent's activations on your own text.

    features_by_token(store, "Paris")          latents that fire most on that token (precomputed)
    features_for_text(store, model, sae, text) run the text, rank latents by their peak on it
    search_text(store, "capital city")         full-text search over top contexts and explanations
    feature_on_text(model, sae, 123, text)     per-token activations of one latent

Results are lists of plain dicts (one per latent) carrying the features-table columns
(density, max_act, top_token_text, scores) plus the match's own fields, so the same rows
feed the app's sortable list and notebook tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.features.store import FeatureStore

MAX_TEXT_TOKENS = 512
"""Longest text `features_for_text` and `feature_on_text` accept (one forward, no chunking)."""
MAX_QUERY_CHARS = 200
_WORD = re.compile(r"\w+", re.UNICODE)


# ---------------------------------------------------------------------------- by token
def matching_tokens(store: FeatureStore, query: str, limit: int = 20) -> list[tuple[int, str]]:
    """Token ids whose text equals the query (case and surrounding spaces ignored); when none
    does, those that start with it."""
    norm = _clean(query, "a token").lower()
    rows = store._query("SELECT token, text FROM vocab WHERE norm = ? ORDER BY token LIMIT ?", (norm, limit))
    if not rows:
        escaped = norm.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = store._query("SELECT token, text FROM vocab WHERE norm LIKE ? ESCAPE '\\' ORDER BY length(norm), token "
                            "LIMIT ?", (escaped + "%", limit))
    return [(int(t), text) for t, text in rows]


def features_by_token(store: FeatureStore, query: str, limit: int = 50) -> list[dict[str, Any]]:
    """Latents that fire most on the token(s) matching `query`, strongest first.

    Each row: the features-table columns plus score (mean activation over the token's
    occurrences, zeros included), frac (share of occurrences on which it fired),
    specificity (share of the latent's firing tokens that are this token: near 1 for a
    latent about this token, near 0 for a broad one), token (the matched token text) and
    token_count (its occurrences in the harvested text).
    Several matching tokens (" Paris" and "Paris") are merged, weighted by their counts.
    """
    tokens = matching_tokens(store, query)
    if not tokens:
        raise WorkbenchError(f"no token {query.strip()!r} occurs in the {store.n_tokens:,} harvested tokens; "
                             "try another spelling, or search the contexts as text")
    ids = [t for t, _ in tokens]
    text_of = dict(tokens)
    placeholders = ",".join("?" * len(ids))
    entries = store._query(f"SELECT token, count, features, mean_act, frac FROM token_features WHERE token IN "
                           f"({placeholders})", ids)
    if not entries:
        shown = ", ".join(repr(text_of[i]) for i in ids[:5])
        raise WorkbenchError(f"the tokens {shown} occur too rarely in the harvested text to rank latents on them "
                             f"(fewer than {store.meta.get('config', {}).get('min_token_count', 2)} times)")
    merged: dict[int, dict[str, float]] = {}
    id_dtype = store.meta.get("token_feature_dtype", "<u2")
    for token, count, features, means, fracs in entries:
        for f, mean, frac in zip(np.frombuffer(features, id_dtype).tolist(), np.frombuffer(means, "<f2").tolist(),
                                 np.frombuffer(fracs, "<f2").tolist()):
            slot = merged.setdefault(f, {"weighted": 0.0, "fired": 0.0, "count": 0, "token": text_of[token],
                                         "best": -1.0})
            slot["weighted"] += mean * count
            slot["fired"] += frac * count
            if abs(mean) > slot["best"]:
                slot["best"], slot["token"] = abs(mean), text_of[token]
    total = sum(entry[1] for entry in entries)
    scored = sorted(merged.items(), key=lambda kv: -abs(kv[1]["weighted"]))[:limit]
    rows = {r["feature"]: r for r in store.rows([f for f, _ in scored])}
    out = []
    for f, slot in scored:
        row = dict(rows[f])
        row.update(score=slot["weighted"] / total, frac=slot["fired"] / total, token=slot["token"], token_count=total,
                   specificity=min(1.0, slot["fired"] / max(row["n_fired"], 1)))
        out.append(row)
    return out


# ---------------------------------------------------------------------------- by text (model + SAE)
@dataclass
class TextCodes:
    """A text run through the model and the SAE."""

    token_ids: list[int]
    tokens: list[str]
    codes: torch.Tensor
    """[T, d_sae] float32 codes (position 0 zeroed when the store skips it)."""
    skipped_position0: bool


def encode_text(model, sae, text: str, *, skip_position0: bool = True) -> TextCodes:
    """Run `text` through the model up to the SAE's site and encode it: codes [T, d_sae]."""
    text = _clean(text, "some text", max_chars=4000)
    ids = model.tokenizer(text)["input_ids"]
    if len(ids) > MAX_TEXT_TOKENS:
        raise WorkbenchError(f"the text has {len(ids)} tokens; the cap is {MAX_TEXT_TOKENS}")
    if not ids:
        raise WorkbenchError("the text produced no tokens")
    input_ids = torch.tensor([ids])
    site = sae.cfg.site
    x = model.read_sites(input_ids, torch.ones_like(input_ids), [site])[site][0]
    with torch.no_grad():
        codes = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
    skipped = bool(skip_position0 and len(ids) > 1)
    if skipped:
        codes[0] = 0
    tokens = model.tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return TextCodes(token_ids=list(ids), tokens=tokens, codes=codes, skipped_position0=skipped)


def features_for_text(store: FeatureStore, model, sae, text: str, limit: int = 50) -> tuple[list[dict[str, Any]], TextCodes]:
    """Latents ranked by how strongly they fire on `text`, relative to their corpus maximum.

    Row fields besides the features-table columns: text_act (peak |activation| on the
    text, signed), score (text_act relative to the latent's largest corpus activation,
    capped at 1; ties broken by text_act), token (where it peaks) and position.
    """
    store.check_model(model)
    store.check_sae(sae)
    result = encode_text(model, sae, text, skip_position0=bool(store.meta.get("config", {}).get("skip_position0", True)))
    peak_abs, where = result.codes.abs().max(dim=0)
    active = torch.nonzero(peak_abs > 0).reshape(-1)
    if active.numel() == 0:
        return [], result
    corpus_max = torch.from_numpy(np.maximum(store.column("max_act"), -store.column("min_act"))).float()
    peak = peak_abs[active]
    relative = peak / torch.maximum(corpus_max[active], peak).clamp_min(1e-12)
    order = sorted(range(active.numel()), key=lambda i: (-float(relative[i]), -float(peak[i])))[:limit]
    chosen = [int(active[i]) for i in order]
    rows = {r["feature"]: r for r in store.rows(chosen)}
    out = []
    for i, f in zip(order, chosen):
        pos = int(where[f])
        row = dict(rows[f])
        row.update(text_act=float(result.codes[pos, f]), score=float(relative[i]), token=result.tokens[pos],
                   position=pos)
        out.append(row)
    return out, result


def feature_on_text(model, sae, index: int, text: str, *, skip_position0: bool = True) -> tuple[list[str], np.ndarray]:
    """(tokens, acts [T]) of latent `index` on `text` ("try your own text")."""
    if not 0 <= int(index) < sae.cfg.d_sae:
        raise WorkbenchError(f"feature {index} is out of range: the SAE has {sae.cfg.d_sae} latents")
    result = encode_text(model, sae, text, skip_position0=skip_position0)
    return result.tokens, result.codes[:, int(index)].numpy()


# ---------------------------------------------------------------------------- free text
def fts_query(query: str) -> str:
    """A safe FTS5 query: every word of `query` quoted, ANDed; a trailing '*' keeps prefix search."""
    query = _clean(query, "words to search for")
    words = _WORD.findall(query)
    if not words:
        raise WorkbenchError(f"{query!r} has no words to search for")
    prefix = query.rstrip().endswith("*")
    parts = [f'"{w}"' for w in words]
    if prefix:
        parts[-1] += "*"
    return " AND ".join(parts)


def search_text(store: FeatureStore, query: str, limit: int = 50) -> list[dict[str, Any]]:
    """Latents whose top contexts or explanations contain every word of `query` (FTS5, bm25).

    Row fields besides the features-table columns: where ("contexts" or "explanation"),
    score (bm25 relevance, higher is better) and snippet (the matching window or explanation).
    """
    match = fts_query(query)
    hits: dict[int, tuple[float, str, str]] = {}
    for feature, text, rank in store._query(
            "SELECT e.feature, e.text, bm25(explanations_fts) FROM explanations_fts JOIN explanations e "
            "ON e.id = explanations_fts.rowid WHERE explanations_fts MATCH ? ORDER BY bm25(explanations_fts) LIMIT ?",
            (match, limit)):
        hits.setdefault(int(feature), (-float(rank), "explanation", text))
    for feature, rank in store._query(
            "SELECT rowid, bm25(context_fts) FROM context_fts WHERE context_fts MATCH ? ORDER BY bm25(context_fts) "
            "LIMIT ?", (match, limit)):
        hits.setdefault(int(feature), (-float(rank), "contexts", ""))
    ranked = sorted(hits.items(), key=lambda kv: -kv[1][0])[:limit]
    rows = {r["feature"]: r for r in store.rows([f for f, _ in ranked])}
    words = [w.lower() for w in _WORD.findall(query)]
    out = []
    for f, (score, where, snippet) in ranked:
        row = dict(rows[f])
        if where == "contexts":
            snippet = _context_snippet(store, f, words)
        row.update(where=where, score=score, snippet=snippet)
        out.append(row)
    return out


def _context_snippet(store: FeatureStore, index: int, words: list[str]) -> str:
    """The first top window of latent `index` that contains the first query word."""
    examples = [e for e in store.contexts(index) if e.kind != "quantile"]
    for example in examples:
        text = "".join(example.tokens)
        if words and words[0].rstrip("*") in text.lower():
            return text.strip()
    return "".join(examples[0].tokens).strip() if examples else ""


def _clean(text: Any, what: str, max_chars: int = MAX_QUERY_CHARS) -> str:
    if not isinstance(text, str) or not text.strip():
        raise WorkbenchError(f"the search is empty: type {what}")
    if len(text) > max_chars:
        raise WorkbenchError(f"the query has {len(text)} characters; the cap is {max_chars}")
    return text.strip()
