"""`FeatureStore`: read a harvested feature store (schema.py) and answer the card queries.

    store = FeatureStore("data/features/smollm2-135m/batchtopk-l15-8k.sqlite", model="smollm2-135m")
    card = store.card(123)              # everything a dashboard shows, in one call (~ms)
    store.list_features(sort_by="density", limit=50)
    store.set_scores("output_score", scores)   # steering scores, [d_sae]

Reads go through one read-only connection (shared by threads under a lock; the app calls
from worker threads). The few writes (scores, explanations) open a short read-write
connection and commit in one transaction. Stores opened by registered name come from the
catalog (`open_store`), never from a path typed into the UI.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workbench.errors import UnknownNameError, WorkbenchError
from workbench.features.codec import unpack_arrays
from workbench.features.schema import EXAMPLE_KINDS, SCORE_COLUMNS, SORTABLE_COLUMNS, check_version, migrate


@dataclass
class Example:
    """One example context of a latent: a window of tokens with the latent's activation on each."""

    kind: str
    """"top", "quantile" (a sample from an activation quantile interval) or "bottom" (most negative)."""
    interval: int | None
    """Quantile interval of a "quantile" sample (0 = lowest); None otherwise."""
    token_ids: list[int]
    tokens: list[str]
    """Decoded text of each window token."""
    acts: np.ndarray
    """[len(tokens)] float32 activation of the latent on each token."""
    peak: int
    """Index of the peak token within the window."""
    value: float
    """The activation at the peak."""
    doc: int
    """Corpus document of the peak token (-1 for an inserted BOS)."""
    doc_pos: int
    """Its position within that document."""


@dataclass
class Neighbour:
    """A related latent: decoder-cosine neighbour or co-firing partner."""

    index: int
    score: float
    label: str
    """The top token of that latent (or "dead"), to make lists readable."""


@dataclass
class FeatureCard:
    """Everything the dashboards show about one latent."""

    feature_id: str
    index: int
    signed: bool
    n_tokens: int
    """Tokens the harvest ran over."""
    n_fired: int
    density: float
    max_act: float
    min_act: float
    mean_act: float | None
    n_contexts: int
    top_token: str | None
    hist_edges: np.ndarray
    """[B + 1] bin edges of |activation| (log-spaced)."""
    hist_pos: np.ndarray
    """[B] counts of positive activations per bin."""
    hist_neg: np.ndarray
    """[B] counts of negative activations per bin (zeros for non-negative codes)."""
    top_logits: list[tuple[str, float]]
    bottom_logits: list[tuple[str, float]]
    examples: list[Example]
    decoder_neighbours: list[Neighbour]
    cofire_neighbours: list[Neighbour]
    explanations: list[dict[str, Any]] = field(default_factory=list)
    input_score: float | None = None
    output_score: float | None = None
    has_logits: bool = True

    @property
    def dead(self) -> bool:
        return self.n_fired == 0

    def examples_of(self, kind: str) -> list[Example]:
        return [e for e in self.examples if e.kind == kind]


class FeatureStore:
    """A read-only view of one SAE's feature store, with a few bulk-write helpers."""

    def __init__(self, path: str | Path, *, model: str | None = None, sae: Any = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise WorkbenchError(f"no feature store at {self.path}; build one with `workbench harvest SAE_DIR "
                                 "--model M --corpus C --tokens N --out STORE`")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as error:
            raise WorkbenchError(f"{self.path} is not a SQLite feature store ({error})") from None
        self._lock = threading.RLock()
        try:
            self.meta = self._read_meta()
            self.rebuild_hint = self._rebuild_hint()
            check_version(self._conn, str(self.path), self.rebuild_hint)
            self.d_sae = int(self.meta["d_sae"])
            self.model_name = str(self.meta["model"])
            self.site = str(self.meta["site"])
            self.sae_name = str(self.meta["sae_name"])
            self.signed = bool(self.meta.get("signed"))
            self.n_tokens = int(self.meta.get("n_tokens", 0))
            if model is not None:
                self.check_model(model)
            if sae is not None:
                self.check_sae(sae)
        except BaseException:
            self._conn.close()
            raise
        self._tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._vocab: dict[int, str] = {}  # token id -> text, filled on demand
        self._edges: np.ndarray | None = None

    # ------------------------------------------------------------------ identity
    def _read_meta(self) -> dict[str, Any]:
        try:
            rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError:
            raise WorkbenchError(f"{self.path} is not a feature store (no meta table); build one with "
                                 "`workbench harvest`") from None
        return {key: json.loads(value) for key, value in rows}

    def _rebuild_hint(self) -> str:
        command = self.meta.get("command")
        return f"Rebuild it with: {command}" if command else "Rebuild it with `workbench harvest`."

    def check_model(self, model: Any) -> None:
        """Raise unless the store was built for `model` (a name or a workbench Model)."""
        name = getattr(model, "name", model)
        if name != self.model_name:
            raise WorkbenchError(f"{self.path} was built for model {self.model_name!r}, not {name!r}; "
                                 "open the store of this model's SAE or load that model")

    def check_sae(self, sae: Any) -> None:
        """Raise unless `sae` is the dictionary this store was harvested from."""
        from workbench.features.harvest import sae_probe

        cfg = sae.cfg
        if cfg.d_sae != self.d_sae or cfg.site != self.site:
            raise WorkbenchError(f"{self.path} was built for an SAE with {self.d_sae} latents at {self.site}, "
                                 f"not {cfg.d_sae} at {cfg.site}")
        probe = np.asarray(sae_probe(sae))
        stored = np.asarray(self.meta.get("sae_probe", []))
        if stored.shape != probe.shape or not np.allclose(probe, stored, atol=2e-2 * max(1e-6, np.abs(stored).max())):
            raise WorkbenchError(f"{self.path} was built for another SAE (the decoder weights differ); "
                                 f"{self.rebuild_hint}")

    def feature_id(self, index: int) -> str:
        """`MODEL/SITE/SAE_NAME/INDEX`."""
        return f"{self.model_name}/{self.site}/{self.sae_name}/{int(index)}"

    def check_index(self, index: Any) -> int:
        """A valid latent index, or a WorkbenchError saying the range."""
        try:
            value = int(index)
        except (TypeError, ValueError):
            raise WorkbenchError(f"feature index must be an integer, got {index!r}") from None
        if isinstance(index, float) and index != value:
            raise WorkbenchError(f"feature index must be an integer, got {index!r}")
        if not 0 <= value < self.d_sae:
            raise WorkbenchError(f"feature {value} is out of range: {self.sae_name} has {self.d_sae} latents "
                                 f"(0..{self.d_sae - 1})")
        return value

    # ------------------------------------------------------------------ cached store-level data
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _blob(self, name: str) -> dict[str, np.ndarray] | None:
        rows = self._query("SELECT data FROM blobs WHERE name=?", (name,))
        return unpack_arrays(rows[0][0], f"{self.path}:{name}") if rows else None

    @property
    def context_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, doc, pos), each [rows, context_size]: the corpus contexts the examples point into."""
        if self._tokens is None:
            blob = self._blob("context_tokens")
            self._tokens = (blob["tokens"].astype(np.int64), blob["doc"], blob["pos"])
        return self._tokens

    def token_texts(self, token_ids) -> dict[int, str]:
        """id -> decoded text for these token ids (fetched in one query, then cached)."""
        wanted = {int(t) for t in token_ids}
        missing = sorted(wanted - self._vocab.keys())
        for start in range(0, len(missing), 900):
            part = missing[start:start + 900]
            found = dict(self._query(f"SELECT token, text FROM vocab WHERE token IN ({','.join('?' * len(part))})", part))
            self._vocab.update({t: found.get(t, f"<{t}>") for t in part})
        return {t: self._vocab[t] for t in wanted}

    @property
    def hist_edges(self) -> np.ndarray:
        if self._edges is None:
            self._edges = self._blob("hist_edges")["edges"]
        return self._edges

    def token_text(self, token_id: int | None) -> str | None:
        """Decoded text of one token id (None for None)."""
        if token_id is None:
            return None
        return self.token_texts([token_id])[int(token_id)]

    # ------------------------------------------------------------------ cards
    def summary(self, index: int) -> dict[str, Any]:
        """The features-table row of one latent (density, activations, scores, top token)."""
        return self.rows([self.check_index(index)])[0]

    def rows(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """features-table rows for the given latents, in the given order."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        found: dict[int, dict[str, Any]] = {}
        for chunk in range(0, len(indices), 900):
            part = indices[chunk:chunk + 900]
            sql = f"SELECT * FROM features WHERE feature IN ({','.join('?' * len(part))})"
            with self._lock:
                cursor = self._conn.execute(sql, part)
                names = [d[0] for d in cursor.description]
                for values in cursor.fetchall():
                    row = dict(zip(names, values))
                    found[row["feature"]] = row
        texts = self.token_texts(r["top_token"] for r in found.values() if r["top_token"] is not None)
        for row in found.values():
            row["top_token_text"] = None if row["top_token"] is None else texts[row["top_token"]]
        return [found[i] for i in indices if i in found]

    def _card_arrays(self, index: int) -> dict[str, np.ndarray]:
        rows = self._query("SELECT data FROM cards WHERE feature=?", (index,))
        if not rows:
            raise WorkbenchError(f"{self.path} has no card for feature {index}; the store is damaged. {self.rebuild_hint}")
        return unpack_arrays(rows[0][0], f"card of feature {index} in {self.path}")

    def card(self, index: int) -> FeatureCard:
        """Everything about latent `index` (one features row, one cards row, its explanations)."""
        index = self.check_index(index)
        row = self.summary(index)
        data = self._card_arrays(index)
        empty = np.zeros(0)
        decoder_ids, cofire_ids = data["nb_decoder_ids"].astype(np.int64), data["nb_cofire_ids"].astype(np.int64)
        labels = self._labels(np.concatenate([decoder_ids, cofire_ids]))

        def logit_list(ids_key: str, values_key: str) -> list[tuple[str, float]]:
            ids, values = data.get(ids_key, empty), data.get(values_key, empty)
            texts = self.token_texts(ids.tolist())
            return [(texts[int(t)], float(v)) for t, v in zip(ids, values)]

        return FeatureCard(
            feature_id=self.feature_id(index), index=index, signed=self.signed, n_tokens=self.n_tokens,
            n_fired=row["n_fired"], density=row["density"], max_act=row["max_act"], min_act=row["min_act"],
            mean_act=row["mean_act"], n_contexts=row["n_contexts"], top_token=row["top_token_text"],
            hist_edges=self.hist_edges, hist_pos=data["hist_pos"], hist_neg=data["hist_neg"],
            top_logits=logit_list("logit_top_ids", "logit_top"),
            bottom_logits=logit_list("logit_bottom_ids", "logit_bottom"),
            examples=self._decode_examples(data),
            decoder_neighbours=[Neighbour(int(i), float(s), labels[int(i)])
                                for i, s in zip(decoder_ids, data["nb_decoder_cos"])],
            cofire_neighbours=[Neighbour(int(i), float(s), labels[int(i)])
                               for i, s in zip(cofire_ids, data["nb_cofire_jaccard"])],
            explanations=self.explanations(index), input_score=row["input_score"], output_score=row["output_score"],
            has_logits=bool(self.meta.get("logits", True)),
        )

    def contexts(self, index: int, kind: str | None = None) -> list[Example]:
        """The example windows of latent `index` (all kinds, or only "top" / "quantile" / "bottom")."""
        index = self.check_index(index)
        if kind is not None and kind not in EXAMPLE_KINDS.values():
            raise UnknownNameError("example kind", kind, list(EXAMPLE_KINDS.values()))
        examples = self._decode_examples(self._card_arrays(index))
        return [e for e in examples if kind is None or e.kind == kind]

    def _decode_examples(self, data: dict[str, np.ndarray]) -> list[Example]:
        tokens, doc, pos = self.context_arrays
        windows = [tokens[int(r), int(s):int(s) + int(n)].tolist()
                   for r, s, n in zip(data["ex_row"], data["ex_start"], data["ex_length"])]
        texts = self.token_texts(t for ids in windows for t in ids)
        out = []
        for i, ids in enumerate(windows):
            row, start, length = int(data["ex_row"][i]), int(data["ex_start"][i]), int(data["ex_length"][i])
            peak = int(data["ex_peak"][i])
            kind = EXAMPLE_KINDS[int(data["ex_kind"][i])]
            out.append(Example(
                kind=kind, interval=int(data["ex_interval"][i]) if kind == "quantile" else None, token_ids=ids,
                tokens=[texts[t] for t in ids], acts=data["ex_acts"][i, :length].astype(np.float32),
                peak=peak - start, value=float(data["ex_value"][i]), doc=int(doc[row, peak]), doc_pos=int(pos[row, peak]),
            ))
        return out

    def _labels(self, indices: np.ndarray) -> dict[int, str]:
        labels = {}
        for row in self.rows(sorted({int(i) for i in indices})):
            labels[row["feature"]] = row["top_token_text"] if row["n_fired"] else "dead"
        return labels

    def neighbours(self, index: int) -> dict[str, list[Neighbour]]:
        """{"decoder": nearest decoder rows by cosine, "cofire": co-firing latents by Jaccard}."""
        card = self.card(index)
        return {"decoder": card.decoder_neighbours, "cofire": card.cofire_neighbours}

    # ------------------------------------------------------------------ lists
    def list_features(self, sort_by: str = "density", *, descending: bool = True, limit: int = 100, offset: int = 0,
                      min_density: float | None = None, max_density: float | None = None,
                      include_dead: bool = False, require: str | None = None) -> list[dict[str, Any]]:
        """features-table rows sorted by a column (density, max_act, input_score, output_score, ...).

        require: a score column that must be set (rows where it is NULL are left out).
        """
        if sort_by not in SORTABLE_COLUMNS:
            raise UnknownNameError("sort column", sort_by, SORTABLE_COLUMNS)
        if require is not None and require not in SCORE_COLUMNS:
            raise UnknownNameError("score", require, SCORE_COLUMNS)
        where, params = [], []
        if not include_dead:
            where.append("n_fired > 0")
        if min_density is not None:
            where.append("density >= ?")
            params.append(float(min_density))
        if max_density is not None:
            where.append("density <= ?")
            params.append(float(max_density))
        for column in {require, sort_by if sort_by in SCORE_COLUMNS else None} - {None}:
            where.append(f"{column} IS NOT NULL")
        sql = (f"SELECT feature FROM features {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY {sort_by} {'DESC' if descending else 'ASC'}, feature LIMIT ? OFFSET ?")
        ids = [r[0] for r in self._query(sql, (*params, int(limit), int(offset)))]
        return self.rows(ids)

    def column(self, name: str) -> np.ndarray:
        """[d_sae] one features-table column (NULL -> NaN)."""
        if name not in SORTABLE_COLUMNS:
            raise UnknownNameError("column", name, SORTABLE_COLUMNS)
        values = [r[0] for r in self._query(f"SELECT {name} FROM features ORDER BY feature")]
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def umap_map(self) -> np.ndarray | None:
        """[d_sae, 2] UMAP coordinates of the decoder rows, or None if the harvest skipped UMAP."""
        blob = self._blob("umap")
        return None if blob is None else blob["xy"]

    def has_scores(self) -> dict[str, bool]:
        """Which steering scores are present (any non-NULL value)."""
        return {name: bool(self._query(f"SELECT 1 FROM features WHERE {name} IS NOT NULL LIMIT 1"))
                for name in SCORE_COLUMNS}

    # ------------------------------------------------------------------ writes
    def _write(self, statements: list[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            with conn:
                for sql, rows in statements:
                    conn.executemany(sql, rows)
        except sqlite3.OperationalError as error:
            raise WorkbenchError(f"cannot write to {self.path} ({error}); is the file read-only?") from None
        finally:
            conn.close()

    def set_scores(self, name: str, values: Any) -> None:
        """Write a steering score for every latent: values [d_sae] (NaN / None = unknown)."""
        if name not in SCORE_COLUMNS:
            raise UnknownNameError("score", name, SCORE_COLUMNS)
        array = np.asarray([np.nan if v is None else v for v in np.asarray(values, dtype=object).reshape(-1)],
                           dtype=np.float64)
        if array.shape != (self.d_sae,):
            raise WorkbenchError(f"{name} needs one value per latent ({self.d_sae}), got {array.shape[0]}")
        rows = [(None if np.isnan(v) else float(v), i) for i, v in enumerate(array)]
        self._write([(f"UPDATE features SET {name}=? WHERE feature=?", rows)])

    def scores(self, name: str) -> np.ndarray:
        """[d_sae] a steering score (NaN where unset)."""
        if name not in SCORE_COLUMNS:
            raise UnknownNameError("score", name, SCORE_COLUMNS)
        return self.column(name)

    def add_explanation(self, index: int, text: str, source: str = "user") -> None:
        """Attach a free-text explanation to a latent (searchable with `search_text`)."""
        index = self.check_index(index)
        text = (text or "").strip()
        if not text:
            raise WorkbenchError("an explanation needs some text")
        created = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write([("INSERT INTO explanations(feature, text, source, created) VALUES (?, ?, ?, ?)",
                      [(index, text, source, created)])])

    def explanations(self, index: int) -> list[dict[str, Any]]:
        rows = self._query("SELECT text, source, created FROM explanations WHERE feature=? ORDER BY id", (index,))
        return [{"text": t, "source": s, "created": c} for t, s, c in rows]

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def migrate(cls, path: str | Path) -> int:
        """Upgrade an older store in place to the current schema (when a migration exists)."""
        conn = sqlite3.connect(path)
        try:
            return migrate(conn)
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, model={self.model_name!r}, sae={self.sae_name!r}, "
                f"site={self.site!r}, d_sae={self.d_sae}, n_tokens={self.n_tokens})")


# ---------------------------------------------------------------------------- catalog access
def open_store(model: str, sae_name: str) -> FeatureStore:
    """The feature store of a registered SAE (catalog), checked against the model name."""
    from workbench.catalog import get_sae

    entry = get_sae(model, sae_name)
    path = entry.feature_store
    if not path.is_file():
        raise WorkbenchError(f"SAE {sae_name!r} of {model} has no feature store yet (expected {path}); build it with "
                             f"`workbench harvest {entry.folder} --model {model} --out {path}`")
    store = FeatureStore(path, model=model)
    if store.sae_name != sae_name or store.site != entry.site:
        raise WorkbenchError(f"{path} holds features of {store.sae_name} at {store.site}, not of {sae_name} at "
                             f"{entry.site}; rebuild it")
    return store


def resolve_feature_id(feature_id: str) -> tuple[FeatureStore, int]:
    """(store, index) for `MODEL/SITE/SAE_NAME/INDEX` of a registered SAE; clear errors otherwise."""
    from workbench.catalog import get_sae, parse_feature_id

    model, site, sae_name, index = parse_feature_id(feature_id)
    entry = get_sae(model, sae_name)
    if entry.site != site:
        raise UnknownNameError(f"site of SAE {sae_name}", site, [entry.site])
    store = open_store(model, sae_name)
    return store, store.check_index(index)
