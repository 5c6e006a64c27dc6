"""Renderers for steering: continuations with changed tokens marked, and dose-response plots.

Pure functions: data in, an HTML string or a HoloViews object out. The HTML uses inline
styles only (no external CSS or fonts) so it renders the same in the app, in notebooks
and in exported files.
"""

from __future__ import annotations

import html
from typing import Sequence

MARK_STYLE = "background:#ffe08a;border-radius:3px;outline:1px solid #e0b000"
PROMPT_STYLE = "color:#6b7280"
SERIES_COLORS = ("#2f6f9f", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490")
CONTROL_COLOR = "#9ca3af"


def _token_html(token: str) -> str:
    text = html.escape(token)
    return text.replace("\n", "<span style='color:#9ca3af'>&#8629;</span><br>")


def tokens_html(tokens: Sequence[str], changed: Sequence[bool] | None = None) -> str:
    """A continuation as HTML, each changed token in a highlighted <mark> (title says so)."""
    changed = changed or [False] * len(tokens)
    parts = []
    for token, flag in zip(tokens, changed):
        body = _token_html(token)
        parts.append(f"<mark class='wb-changed' style='{MARK_STYLE}' title='changed by steering'>{body}</mark>"
                     if flag else body)
    return "".join(parts)


def side_by_side_html(prompt: str, baseline_tokens: Sequence[str], baseline_changed: Sequence[bool],
                      steered_tokens: Sequence[str], steered_changed: Sequence[bool], *,
                      steered_title: str = "Steered") -> str:
    """Two columns, baseline and steered, each = prompt (grey) + continuation with marks."""
    prompt_html = f"<span style='{PROMPT_STYLE}'>{_token_html(prompt)}</span>"
    n_changed = sum(bool(f) for f in steered_changed)
    cell = ("<div style='flex:1;min-width:240px;border:1px solid #d1d5db;border-radius:6px;padding:8px 10px;"
            "white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.5'>")
    head = "<div style='font-weight:600;margin-bottom:4px;font-family:sans-serif'>{}</div>"
    return (
        "<div class='wb-steer-compare' style='display:flex;gap:12px;flex-wrap:wrap'>"
        f"{cell}{head.format('Baseline')}{prompt_html}{tokens_html(baseline_tokens, baseline_changed)}</div>"
        f"{cell}{head.format(html.escape(steered_title) + f' ({n_changed} tokens changed)')}"
        f"{prompt_html}{tokens_html(steered_tokens, steered_changed)}</div>"
        "</div>"
    )


def dose_response_plot(rows: Sequence[dict], *, units: str = "norm", width: int = 430, height: int = 320):
    """`dose_response_panels` side by side as one HoloViews Layout (for notebooks)."""
    left, right = dose_response_panels(rows, units=units, width=width, height=height)
    return (left + right).opts(shared_axes=False)


def dose_response_panels(rows: Sequence[dict], *, units: str = "norm", width: int = 430, height: int = 320):
    """Two overlays from sweep rows (DoseResponse.rows()): concept score vs coefficient, and
    concept score vs perplexity (fluency), one line per series; controls dashed grey.

    Rows: dicts with series, kind ("baseline" | "target" | "control"), coef, concept,
    perplexity, repetition. (The app shows the two in separate panes: Panel 1.9 fails to
    restyle a HoloViews Layout inside a stretching pane.)
    """
    import holoviews as hv

    if not hv.Store.renderers:  # outside the app/notebook (no hv.extension yet): register bokeh quietly
        import holoviews.plotting.bokeh  # noqa: F401

    series = list(dict.fromkeys(r["series"] for r in rows if r["kind"] != "baseline"))
    if not series:
        raise ValueError("the sweep has no points to plot")
    by_coef, by_fluency = [], []
    color_index = 0
    for name in series:
        points = sorted((r for r in rows if r["series"] == name and r["kind"] != "baseline"), key=lambda r: r["coef"])
        control = points[0]["kind"] == "control"
        color = CONTROL_COLOR if control else SERIES_COLORS[color_index % len(SERIES_COLORS)]
        color_index += 0 if control else 1
        dash = "dashed" if control else "solid"
        table = [(r["coef"], r["concept"], r["perplexity"], r["repetition"]) for r in points]
        kdims, vdims = ["coef"], ["concept", "perplexity", "repetition"]
        curve = hv.Curve(table, kdims, vdims, label=name).opts(color=color, line_dash=dash, line_width=2)
        dots = hv.Scatter(table, kdims, vdims, label=name).opts(color=color, size=7, tools=["hover"])
        by_coef.append(curve * dots)
        fluency = [(r["concept"], r["perplexity"], r["coef"], r["repetition"]) for r in points]
        path = hv.Curve(fluency, ["concept"], ["perplexity", "coef", "repetition"], label=name).opts(
            color=color, line_dash=dash, line_width=2)
        marks = hv.Scatter(fluency, ["concept"], ["perplexity", "coef", "repetition"], label=name).opts(
            color=color, size=7, tools=["hover"])
        by_fluency.append(path * marks)
    baselines = [r for r in rows if r["kind"] == "baseline"]
    left = hv.Overlay(by_coef).opts(
        title="Concept score vs coefficient", xlabel=f"coefficient ({units} units)",
        ylabel="concept score (probability mass)", width=width, height=height, legend_position="top_left",
        show_grid=True)
    right = hv.Overlay(by_fluency)
    if baselines:
        base = baselines[0]
        right = right * hv.Scatter([(base["concept"], base["perplexity"])], ["concept"], ["perplexity"],
                                   label="baseline").opts(color="black", marker="x", size=12)
    right = right.opts(
        title="Concept vs fluency", xlabel="concept score", ylabel="perplexity under the unsteered model",
        logy=True, width=width, height=height, show_legend=False, show_grid=True)
    return left, right
