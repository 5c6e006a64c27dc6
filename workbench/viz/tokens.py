"""Token highlighting: text as coloured token chips, the colour showing an activation.

    highlighted_tokens_html(tokens, acts, scale=max_act, signed=False, peak=3)

Colour scales (all inline CSS, no external assets):
- non-negative codes: white -> orange, opacity proportional to value / scale;
- signed codes (AbsTopK): a diverging scale, orange for positive and blue for negative.
Every token carries a tooltip (`title`) with its text and activation, so values can be read
exactly; the peak token is outlined. Newlines show as the return symbol, and whitespace is
kept visible (leading spaces of BPE tokens matter for reading).
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

POSITIVE_RGB = (242, 120, 0)
NEGATIVE_RGB = (32, 110, 220)

TOKEN_CSS = """
.wbf-tokens{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;line-height:1.9;
  white-space:pre-wrap;word-break:break-word;margin:2px 0;}
.wbf-tok{border-radius:3px;padding:1px 0;}
.wbf-peak{outline:1.5px solid #222;}
.wbf-legend{display:inline-flex;align-items:center;gap:6px;font:11px sans-serif;color:#555;}
.wbf-legend .bar{width:120px;height:10px;border-radius:2px;border:1px solid #ccc;}
"""


def activation_color(value: float, scale: float, signed: bool = False) -> str:
    """CSS background for an activation: transparent at 0, full colour at |value| >= scale."""
    if not np.isfinite(value) or value == 0 or scale <= 0:
        return "transparent"
    strength = min(1.0, abs(float(value)) / float(scale))
    r, g, b = NEGATIVE_RGB if (signed and value < 0) else POSITIVE_RGB
    return f"rgba({r},{g},{b},{0.08 + 0.82 * strength:.3f})"


def display_token(token: str) -> str:
    """A token's text made visible: newlines as the return symbol, tabs as arrows."""
    return token.replace("\r", "").replace("\n", "\u21b5").replace("\t", "\u2192")


def highlighted_tokens_html(tokens: Sequence[str], acts: Sequence[float], *, scale: float | None = None,
                            signed: bool = False, peak: int | None = None, css_class: str = "wbf-tokens") -> str:
    """One line of tokens [T] coloured by acts [T] (same length); returns an HTML <div>.

    scale: the activation shown at full colour (default: the largest |act| in the line).
    """
    acts = np.asarray(acts, dtype=np.float64).reshape(-1)
    if len(tokens) != acts.shape[0]:
        raise ValueError(f"{len(tokens)} tokens but {acts.shape[0]} activations")
    if scale is None:
        scale = float(np.abs(acts).max()) if acts.size else 0.0
    spans = []
    for i, (token, value) in enumerate(zip(tokens, acts)):
        text = html.escape(display_token(token))
        tip = html.escape(f"{token!r}: {value:.3g}", quote=True)
        peak_class = " wbf-peak" if peak is not None and i == peak else ""
        spans.append(f'<span class="wbf-tok{peak_class}" style="background:{activation_color(value, scale, signed)}" '
                     f'title="{tip}">{text}</span>')
    return f'<div class="{css_class}">{"".join(spans)}</div>'


def color_legend_html(scale: float, signed: bool = False) -> str:
    """A small legend bar for the colour scale (0 .. scale, or -scale .. scale when signed)."""
    pos = "rgba({},{},{},0.9)".format(*POSITIVE_RGB)
    if signed:
        neg = "rgba({},{},{},0.9)".format(*NEGATIVE_RGB)
        gradient = f"linear-gradient(to right,{neg},white,{pos})"
        left = f"{-scale:.3g}"
    else:
        gradient = f"linear-gradient(to right,white,{pos})"
        left = "0"
    return (f'<span class="wbf-legend">{left}<span class="bar" style="background:{gradient}"></span>'
            f'{scale:.3g}</span>')


def examples_html(examples: Sequence, *, scale: float, signed: bool = False, title: str = "",
                  show_values: bool = True, include_css: bool = True) -> str:
    """A list of example windows (objects with .tokens, .acts, .peak, .value) as HTML rows."""
    rows = []
    for example in examples:
        value = (f'<span style="font:11px sans-serif;color:#666;min-width:56px;display:inline-block;'
                 f'text-align:right;margin-right:8px">{example.value:.3g}</span>') if show_values else ""
        line = highlighted_tokens_html(example.tokens, example.acts, scale=scale, signed=signed, peak=example.peak,
                                       css_class="wbf-tokens")
        rows.append(f'<div style="display:flex;align-items:baseline;border-bottom:1px solid #eee">{value}'
                    f'<div style="flex:1">{line}</div></div>')
    head = f'<div style="font:600 13px sans-serif;margin:8px 0 4px">{html.escape(title)}</div>' if title else ""
    css = f"<style>{TOKEN_CSS}</style>" if include_css else ""
    return f'{css}<div class="wbf-examples">{head}{"".join(rows) or "<i>none</i>"}</div>'
