"""A whole feature card as one HTML fragment: header, statistics, histogram, logit effects,
top / most negative / quantile-sampled contexts, neighbours, explanations.

The same fragment is shown in the app (Panel HTML panes), in notebooks (IPython HTML) and
in the exported self-contained file (workbench.features.export). Input: a
`workbench.features.store.FeatureCard`.
"""

from __future__ import annotations

import html
from typing import Callable

from workbench.viz.histogram import density_histogram_svg
from workbench.viz.tables import TABLE_CSS, logit_table_html, neighbours_html
from workbench.viz.tokens import TOKEN_CSS, color_legend_html, examples_html

CARD_CSS = TOKEN_CSS + TABLE_CSS + """
.wbf-card{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;max-width:1100px;}
.wbf-card h2{font-size:18px;margin:4px 0;}
.wbf-stats{display:flex;flex-wrap:wrap;gap:14px;font-size:12.5px;color:#333;margin:4px 0 8px;}
.wbf-stats b{font-weight:600;}
.wbf-muted{color:#777;font-size:12px;}
"""


def _fmt_density(density: float) -> str:
    return f"{density:.3%}" if density >= 1e-4 else f"{density:.2e}"


def card_stats_html(card) -> str:
    """The header line of figures: density, max/min/mean activation, contexts, scores."""
    items = [("density", _fmt_density(card.density)), ("fired on", f"{card.n_fired:,} of {card.n_tokens:,} tokens"),
             ("max", f"{card.max_act:.3g}")]
    if card.signed:
        items.append(("min", f"{card.min_act:.3g}"))
    if card.mean_act is not None:
        items.append(("mean when active", f"{card.mean_act:.3g}"))
    items.append(("contexts", f"{card.n_contexts:,}"))
    for name in ("input_score", "output_score"):
        value = getattr(card, name)
        if value is not None:
            items.append((name.replace("_", " "), f"{value:.3f}"))
    return '<div class="wbf-stats">' + "".join(f"<span><b>{k}</b> {html.escape(v)}</span>" for k, v in items) + "</div>"


def contexts_html(card, *, max_per_kind: int = 12, include_css: bool = True) -> str:
    """The example windows of a card: top, most negative (signed codes), quantile samples."""
    scale = max(card.max_act, -card.min_act, 1e-12)
    parts = [f'<div class="wbf-muted">colour: {color_legend_html(scale, card.signed)}; hover a token for its '
             "activation; the outlined token is the peak</div>"]
    top = card.examples_of("top")[:max_per_kind]
    parts.append(examples_html(top, scale=scale, signed=card.signed, title="Top activating contexts",
                               include_css=False))
    if card.signed:
        parts.append(examples_html(card.examples_of("bottom")[:max_per_kind], scale=scale, signed=True,
                                   title="Most negative contexts", include_css=False))
    samples = card.examples_of("quantile")[:max_per_kind]
    if samples:
        parts.append(examples_html(samples, scale=scale, signed=card.signed, include_css=False,
                                   title="Samples across activation quantiles (highest interval first)"))
    css = f"<style>{CARD_CSS}</style>" if include_css else ""
    return css + "".join(parts)


def feature_card_html(card, *, link: Callable[[int], str] | None = None, steer_link: str | None = None,
                      include_css: bool = True, max_per_kind: int = 12) -> str:
    """The full card; `link(index)` makes neighbour links, `steer_link` adds a "steer with this" link."""
    title = f"Feature {card.index}"
    if card.top_token is not None:
        title += f" \u00b7 top token {card.top_token!r}"
    header = (f'<h2>{html.escape(title)}</h2><div class="wbf-muted"><code>{html.escape(card.feature_id)}</code>'
              + (f' \u00b7 <a href="{html.escape(steer_link, quote=True)}" target="_top">steer with this</a>'
                 if steer_link else "") + "</div>")
    parts = [header, card_stats_html(card)]
    if card.explanations:
        items = "".join(f"<li>{html.escape(e['text'])} <span class='wbf-muted'>({html.escape(e['source'])})</span></li>"
                        for e in card.explanations)
        parts.append(f'<div style="font:600 13px sans-serif;margin:8px 0 2px">Explanations</div><ul>{items}</ul>')
    if card.dead:
        parts.append('<p class="wbf-muted">This latent never fired on the harvested text (a dead latent): '
                     "it has no contexts.</p>")
    parts.append('<div style="display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start"><div>'
                 + density_histogram_svg(card.hist_edges, card.hist_pos, card.hist_neg, title="Activation histogram")
                 + "</div><div>" + logit_table_html(card.top_logits, card.bottom_logits, include_css=False)
                 + "</div></div>")
    if not card.dead:
        parts.append(contexts_html(card, max_per_kind=max_per_kind, include_css=False))
    parts.append(neighbours_html(card.decoder_neighbours, card.cofire_neighbours, link=link, include_css=False))
    css = f"<style>{CARD_CSS}</style>" if include_css else ""
    return f'{css}<div class="wbf-card">{"".join(parts)}</div>'
