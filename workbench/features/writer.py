"""Write a feature store: build the SQLite file in a temporary path, then rename it into place."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from workbench.atomic import atomic_path
from workbench.features.finalize import StoreContent
from workbench.features.schema import SCHEMA_VERSION, create_schema


def _num(value: Any) -> Any:
    """numpy scalar -> Python number; NaN -> None (SQL NULL)."""
    if value is None:
        return None
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value != value:
        return None
    return value


def write_store(out: str | Path, content: StoreContent, meta: dict[str, Any]) -> dict[str, Any]:
    """Write `content` with `meta` to the store file `out` atomically; returns its stats (+ size)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            # a private temporary file: no journal needed; the rename publishes it
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            create_schema(conn)
            full_meta = dict(meta, schema_version=SCHEMA_VERSION, stats=content.stats,
                             logits=bool(content.stats.get("logits")))
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                             [(key, json.dumps(value)) for key, value in full_meta.items()])
            cols = content.features
            names = ["feature", "n_fired", "density", "max_act", "min_act", "mean_act", "n_contexts", "top_token"]
            top = cols["top_token"]
            rows = []
            for i in range(len(cols["feature"])):
                row = [_num(cols[name][i]) for name in names]
                row[-1] = None if top[i] < 0 else int(top[i])
                rows.append(row)
            conn.executemany(f"INSERT INTO features({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", rows)
            conn.executemany("INSERT INTO cards(feature, data) VALUES (?, ?)", content.cards)
            conn.executemany("INSERT INTO token_features(token, count, features, mean_act, frac) VALUES (?, ?, ?, ?, ?)",
                             content.token_features)
            conn.executemany("INSERT INTO vocab(token, text, norm) VALUES (?, ?, ?)",
                             [(t, text, text.strip().lower()) for t, text in content.vocab.items()])
            conn.executemany("INSERT INTO blobs(name, data) VALUES (?, ?)", list(content.blobs.items()))
            conn.executemany("INSERT INTO context_fts(rowid, text) VALUES (?, ?)", content.fts)
            conn.execute("INSERT INTO context_fts(context_fts) VALUES ('optimize')")
            conn.commit()
            conn.execute("VACUUM")
        finally:
            conn.close()
    stats = dict(content.stats, size_bytes=out.stat().st_size, path=str(out))
    return stats


def table_sizes(path: str | Path) -> dict[str, int]:
    """Bytes per table/index of a store (sqlite's dbstat), for size budgets."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.OperationalError:  # dbstat not compiled in
        return {}
    finally:
        conn.close()
    return {name: int(size) for name, size in rows}

