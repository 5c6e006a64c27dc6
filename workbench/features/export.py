"""Export a feature card as one self-contained HTML file (inline CSS and SVG, no scripts, no CDN).

    export_card_html(store, 123, "feature-123.html")

The file opens offline in any browser and can be mailed or attached to a notebook; it
shows the same card as the app (workbench.viz.feature_card).
"""

from __future__ import annotations

import html
from pathlib import Path

from workbench.atomic import write_text
from workbench.features.store import FeatureStore
from workbench.viz.feature_card import CARD_CSS, feature_card_html


def card_document(store: FeatureStore, index: int) -> str:
    """The HTML document of latent `index`'s card (a string)."""
    card = store.card(index)
    body = feature_card_html(card, include_css=False)
    meta = store.meta
    footer = (f'<p class="wbf-muted">Harvested from {meta.get("n_tokens", 0):,} tokens of the '
              f'{html.escape(str(meta.get("corpus")))} corpus ({html.escape(str(meta.get("split")))} split) with '
              f'{html.escape(str(meta.get("architecture")))} SAE {html.escape(store.sae_name)} '
              f'({store.d_sae} latents) at {html.escape(store.site)} of {html.escape(store.model_name)}; '
              f'exported by Sparse Workbench {html.escape(str(meta.get("workbench_version", "")))}.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(card.feature_id)}</title><style>{CARD_CSS}"
            "body{margin:16px;background:#fff}</style></head>"
            f"<body>{body}{footer}</body></html>\n")


def export_card_html(store: FeatureStore, index: int, out: str | Path) -> Path:
    """Write latent `index`'s card to `out` (atomically); returns the path."""
    out = Path(out)
    write_text(out, card_document(store, index))
    return out
