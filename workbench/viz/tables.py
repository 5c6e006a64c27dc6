"""HTML tables for a latent: its logit effects and its neighbours.

    logit_table_html(top=[(" Paris", 3.1), ...], bottom=[(" the", -2.0), ...])
    neighbours_html(decoder=[Neighbour(12, 0.61, " France"), ...], cofire=[...], link=lambda i: f"?feature={i}")

Each value gets a bar proportional to its magnitude so the shape of the list reads at a glance.
"""

from __future__ import annotations

import html
from typing import Callable, Sequence

from workbench.viz.tokens import NEGATIVE_RGB, POSITIVE_RGB, display_token

TABLE_CSS = """
.wbf-table{border-collapse:collapse;font:12px sans-serif;margin:2px 12px 6px 0;}
.wbf-table th{text-align:left;font-weight:600;padding:2px 6px;border-bottom:1px solid #ccc;}
.wbf-table td{padding:1px 6px;white-space:nowrap;}
.wbf-table code{background:#f4f4f4;border-radius:3px;padding:0 3px;white-space:pre;}
.wbf-bar{display:inline-block;height:8px;border-radius:2px;vertical-align:middle;}
"""


def _bar(value: float, peak: float, rgb: tuple[int, int, int]) -> str:
    width = 0 if peak <= 0 else max(1, round(60 * abs(value) / peak))
    return f'<span class="wbf-bar" style="width:{width}px;background:rgb{rgb}"></span>'


def _token_cell(token: str) -> str:
    return f"<code>{html.escape(display_token(token))}</code>"


def logit_table_html(top: Sequence[tuple[str, float]], bottom: Sequence[tuple[str, float]], *,
                     title: str = "Logit effects", include_css: bool = True) -> str:
    """Two tables side by side: the tokens the latent's decoder direction promotes and suppresses."""
    css = f"<style>{TABLE_CSS}</style>" if include_css else ""
    head = f'<div style="font:600 13px sans-serif;margin:8px 0 2px">{html.escape(title)}</div>' if title else ""
    if not top and not bottom:
        return (f'{css}{head}<div style="font:12px sans-serif;color:#888">no logit effects: the SAE does not write '
                "into the residual stream</div>")
    peak = max([abs(v) for _, v in list(top) + list(bottom)] or [1.0])

    def table(rows, label, rgb):
        body = "".join(f"<tr><td>{_token_cell(t)}</td><td style='text-align:right'>{v:+.3g}</td>"
                       f"<td>{_bar(v, peak, rgb)}</td></tr>" for t, v in rows)
        return f'<table class="wbf-table"><tr><th colspan="3">{label}</th></tr>{body}</table>'

    return (f'{css}{head}<div style="display:flex;flex-wrap:wrap">'
            f'{table(top, "promotes", POSITIVE_RGB)}{table(bottom, "suppresses", NEGATIVE_RGB)}</div>')


def neighbours_html(decoder: Sequence, cofire: Sequence, *, link: Callable[[int], str] | None = None,
                    title: str = "Neighbours", include_css: bool = True) -> str:
    """Nearest decoder directions (cosine) and co-firing latents (Jaccard), each row linkable.

    Items have .index, .score, .label (workbench.features.store.Neighbour).
    """
    css = f"<style>{TABLE_CSS}</style>" if include_css else ""
    head = f'<div style="font:600 13px sans-serif;margin:8px 0 2px">{html.escape(title)}</div>' if title else ""

    def name(index: int) -> str:
        if link is None:
            return f"#{index}"
        return f'<a href="{html.escape(link(index), quote=True)}" target="_top">#{index}</a>'

    def table(items, label, score_label):
        if not items:
            return f'<table class="wbf-table"><tr><th>{label}</th></tr><tr><td><i>none</i></td></tr></table>'
        peak = max(abs(n.score) for n in items) or 1.0
        body = "".join(f"<tr><td>{name(n.index)}</td><td>{_token_cell(n.label)}</td>"
                       f"<td style='text-align:right'>{n.score:.3f}</td><td>{_bar(n.score, peak, POSITIVE_RGB)}</td></tr>"
                       for n in items)
        return (f'<table class="wbf-table"><tr><th colspan="2">{label}</th><th colspan="2">{score_label}</th></tr>'
                f"{body}</table>")

    return (f'{css}{head}<div style="display:flex;flex-wrap:wrap">'
            f'{table(decoder, "nearest decoder directions", "cosine")}'
            f'{table(cofire, "fire on the same tokens", "Jaccard")}</div>')
