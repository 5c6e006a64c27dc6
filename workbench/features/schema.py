"""The feature store's SQLite schema (version 1): tables, blob layouts, and version checks.

One store holds what `harvest` recorded for one SAE of one model. It is a single SQLite
file, built into a temporary file and renamed into place (readers never see half a
store). Feature ids print as `MODEL/SITE/SAE_NAME/INDEX` (meta `model`, `site`,
`sae_name`, and the row's `feature`).

Tables
------
meta(key TEXT PRIMARY KEY, value TEXT)
    JSON-encoded values: schema_version, model, site, site_out, sae_name, architecture,
    d_sae, d_in, d_out, k, transcoder, signed, sae_fingerprint, corpus, split,
    n_tokens, n_contexts, context_size, window_before, window_after, config (the
    HarvestConfig as a dict), created, workbench_version, logits (true when logit
    effects were computed), command (the harvest command line, for rebuild messages).

features(feature INTEGER PRIMARY KEY, ...)  one row per latent, for lists and sorting
    n_fired      tokens on which the latent was non-zero
    density      n_fired / n_tokens
    max_act      largest activation (0 when never positive)
    min_act      most negative activation (signed codes; else 0)
    mean_act     mean non-zero activation (NULL when dead)
    n_contexts   contexts in which it fired at least once
    top_token    token id at the peak of its best example (NULL when dead)
    input_score, output_score   steering scores (NULL until `FeatureStore.set_scores`)
    Indexed on density, max_act, input_score, output_score.

cards(feature INTEGER PRIMARY KEY, data BLOB)
    One array blob (`codec.pack_arrays`) per latent, so a card is one row read. Integer
    ids are stored in the smallest unsigned type that holds them (readers cast). Arrays:
    examples    ex_kind [n] (0 top, 1 quantile sample, 2 most negative), ex_interval [n]
                (quantile interval, 0 = lowest; 255 for top/bottom), ex_row [n] (row of
                blobs.context_tokens), ex_start [n], ex_length [n] (the window is
                row[start:start+length]), ex_peak [n] (peak position in the row), ex_value
                f16 [n] (peak activation; exact extremes are in `features`), ex_acts f16 [n, W] (the latent's activation on
                each window token, zero-padded to W = window_before + 1 + window_after).
    histogram   hist_pos, hist_neg i32 [B]: counts of |a| in the bins of blobs.hist_edges,
                for positive and negative codes (hist_neg all zero for non-negative codes).
    logits      logit_top_ids [n], logit_top f16 [n], logit_bottom_ids [n], logit_bottom f16 [n]:
                the decoder row through the final norm and unembedding (empty when the SAE
                does not write into the residual stream).
    neighbours  nb_decoder_ids [n], nb_decoder_cos f16 [n] (nearest decoder rows by cosine),
                nb_cofire_ids [n], nb_cofire_jaccard f16 [n] (latents firing on the same
                tokens, by Jaccard index of their firing sets; zero entries dropped).

token_features(token INTEGER PRIMARY KEY, count INTEGER, features BLOB, mean_act BLOB, frac BLOB)
    For each token id seen at least `min_token_count` times: how often it occurred and the
    latents that fire most on it, as raw little-endian arrays (no codec: these rows are
    tiny): features u16 [n] (u32 when meta token_feature_dtype says so), mean_act f16 [n]
    (mean activation over all occurrences of the token, zeros included), frac f16 [n]
    (share of its occurrences on which the latent fired); ranked by |mean_act|.

vocab(token INTEGER PRIMARY KEY, text TEXT, norm TEXT)
    Decoded text of every token id the store refers to; norm = lower(strip(text)),
    indexed, for token search.

blobs(name TEXT PRIMARY KEY, data BLOB)
    context_tokens: tokens [rows, context_size] (u16 or i32), the corpus contexts that
                    the examples point into (only those referenced), with doc and pos
                    (i32, same shape): each token's corpus document and position in it.
    hist_edges:     edges f32 [B + 1] of the log-spaced |activation| bins.
    umap:           xy f32 [d_sae, 2], UMAP of the decoder rows (cosine metric), or absent.

context_fts  FTS5, contentless: rowid = feature, text = the core of its top windows
    (FTS_WINDOWS windows, FTS_BEFORE tokens before the peak to FTS_AFTER after).
explanations(id INTEGER PRIMARY KEY, feature INTEGER, text TEXT, source TEXT, created TEXT)
explanations_fts  FTS5 over explanations.text (external content, kept in sync by triggers).
"""

from __future__ import annotations

import sqlite3

from workbench.errors import WorkbenchError

SCHEMA_VERSION = 1
"""Bump when a table or blob layout changes; add a migration to MIGRATIONS when one is possible."""

SCORE_COLUMNS = ("input_score", "output_score")
"""Per-feature steering scores the store can hold (nullable columns of `features`)."""

SORTABLE_COLUMNS = ("feature", "density", "max_act", "min_act", "mean_act", "n_fired", "n_contexts") + SCORE_COLUMNS

EXAMPLE_KINDS = {0: "top", 1: "quantile", 2: "bottom"}

FTS_WINDOWS, FTS_BEFORE, FTS_AFTER = 6, 10, 4
"""What of each latent's top windows the full-text index holds (it is the bulk of a store)."""

DDL = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (
    feature INTEGER PRIMARY KEY,
    n_fired INTEGER NOT NULL,
    density REAL NOT NULL,
    max_act REAL NOT NULL,
    min_act REAL NOT NULL,
    mean_act REAL,
    n_contexts INTEGER NOT NULL,
    top_token INTEGER,
    {SCORE_COLUMNS[0]} REAL,
    {SCORE_COLUMNS[1]} REAL
);
CREATE INDEX features_density ON features(density);
CREATE INDEX features_max_act ON features(max_act);
CREATE INDEX features_input_score ON features(input_score);
CREATE INDEX features_output_score ON features(output_score);
CREATE TABLE cards (feature INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE token_features (
    token INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    features BLOB NOT NULL,
    mean_act BLOB NOT NULL,
    frac BLOB NOT NULL
);
CREATE TABLE vocab (token INTEGER PRIMARY KEY, text TEXT NOT NULL, norm TEXT NOT NULL);
CREATE INDEX vocab_norm ON vocab(norm);
CREATE TABLE blobs (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE VIRTUAL TABLE context_fts USING fts5(text, content='', detail=full);
CREATE TABLE explanations (
    id INTEGER PRIMARY KEY,
    feature INTEGER NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'user',
    created TEXT NOT NULL
);
CREATE INDEX explanations_feature ON explanations(feature);
CREATE VIRTUAL TABLE explanations_fts USING fts5(text, content='explanations', content_rowid='id');
CREATE TRIGGER explanations_ai AFTER INSERT ON explanations BEGIN
    INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER explanations_ad AFTER DELETE ON explanations BEGIN
    INSERT INTO explanations_fts(explanations_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

MIGRATIONS: dict[int, str] = {}
"""from-version -> SQL that upgrades a store to from-version + 1 (none yet: version 1 is the first)."""

REQUIRED_TABLES = ("meta", "features", "cards", "token_features", "vocab", "blobs", "explanations")


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every table and index of the current version in an empty database."""
    conn.executescript(DDL)


def check_version(conn: sqlite3.Connection, path: str, rebuild_hint: str) -> int:
    """The store's schema version; raises a clear WorkbenchError when it cannot be read here.

    Older versions with a migration in MIGRATIONS are reported as migratable (the store
    opens read-only, so `FeatureStore.migrate` does the upgrade explicitly).
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if "meta" not in tables:
        raise WorkbenchError(f"{path} is not a feature store (no meta table); build one with `workbench harvest`")
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        raise WorkbenchError(f"{path} has no schema_version; it is not a workbench feature store. {rebuild_hint}")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise WorkbenchError(
            f"{path} was written with feature-store schema version {version}, newer than this workbench "
            f"reads ({SCHEMA_VERSION}); update the workbench or rebuild the store. {rebuild_hint}"
        )
    if version < SCHEMA_VERSION:
        if all(v in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
            raise WorkbenchError(
                f"{path} uses feature-store schema version {version}; this workbench reads {SCHEMA_VERSION}. "
                f"Upgrade it in place with FeatureStore.migrate({str(path)!r})."
            )
        raise WorkbenchError(
            f"{path} uses feature-store schema version {version}, which this workbench (version "
            f"{SCHEMA_VERSION}) cannot read or migrate. {rebuild_hint}"
        )
    if missing:
        raise WorkbenchError(f"{path} lacks the tables {missing}; the file is damaged. {rebuild_hint}")
    return version


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations from the store's version up to SCHEMA_VERSION; returns the new version."""
    version = int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise WorkbenchError(f"no migration from feature-store schema version {version}; rebuild the store")
        conn.executescript(MIGRATIONS[version])
        version += 1
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    conn.commit()
    return version
