"""The activation histogram of a latent as an inline SVG (no JavaScript, no external assets).

Bins are log-spaced in |activation| (the store's shared edges); positive activations are
drawn upward in orange, negative ones (signed codes) downward in blue. Only the range of
bins that hold counts is drawn, with ticks at powers of ten.
"""

from __future__ import annotations

import html
import math

import numpy as np

from workbench.viz.tokens import NEGATIVE_RGB, POSITIVE_RGB


def density_histogram_svg(edges: np.ndarray, pos: np.ndarray, neg: np.ndarray | None = None, *,
                          width: int = 420, height: int = 150, title: str = "") -> str:
    """SVG of counts pos [B] (and neg [B]) over bins with edges [B + 1]; returns an HTML string."""
    edges = np.asarray(edges, dtype=np.float64)
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.zeros_like(pos) if neg is None else np.asarray(neg, dtype=np.float64)
    if edges.shape[0] != pos.shape[0] + 1 or neg.shape != pos.shape:
        raise ValueError(f"edges must have len(pos) + 1 entries; got {edges.shape[0]} and {pos.shape[0]}")
    head = f'<div style="font:600 13px sans-serif;margin:8px 0 2px">{html.escape(title)}</div>' if title else ""
    total = pos + neg
    filled = np.flatnonzero(total > 0)
    if filled.size == 0:
        return f'{head}<div style="font:12px sans-serif;color:#888">never active in the harvested text</div>'
    lo, hi = int(filled[0]), int(filled[-1]) + 1
    lo, hi = max(0, lo - 1), min(pos.shape[0], hi + 1)
    log_edges = np.log10(edges[lo:hi + 1])
    x0, x1 = log_edges[0], log_edges[-1]
    pad_l, pad_r, pad_t, pad_b = 34, 8, 6, 18
    signed = bool(neg[lo:hi].any())
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    axis_y = pad_t + (plot_h / 2 if signed else plot_h)
    half = plot_h / 2 if signed else plot_h
    peak = max(pos[lo:hi].max(), neg[lo:hi].max(), 1.0)

    def sx(value: float) -> float:
        return pad_l + (value - x0) / max(x1 - x0, 1e-12) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="font:10px sans-serif" role="img">']
    colour_pos = "rgb({},{},{})".format(*POSITIVE_RGB)
    colour_neg = "rgb({},{},{})".format(*NEGATIVE_RGB)
    for i in range(lo, hi):
        left, right = sx(math.log10(edges[i])), sx(math.log10(edges[i + 1]))
        w = max(right - left - 0.5, 0.5)
        label = f"|a| in [{edges[i]:.3g}, {edges[i + 1]:.3g})"
        if pos[i] > 0:
            h = pos[i] / peak * half
            parts.append(f'<rect x="{left:.1f}" y="{axis_y - h:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{colour_pos}"><title>{label}: {int(pos[i])} positive</title></rect>')
        if neg[i] > 0:
            h = neg[i] / peak * half
            parts.append(f'<rect x="{left:.1f}" y="{axis_y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{colour_neg}"><title>{label}: {int(neg[i])} negative</title></rect>')
    parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{axis_y}" y2="{axis_y}" stroke="#999"/>')
    for decade in range(math.ceil(x0), math.floor(x1) + 1):
        x = sx(decade)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{height - pad_b}" y2="{height - pad_b + 3}" stroke="#666"/>'
                     f'<text x="{x:.1f}" y="{height - 4}" text-anchor="middle" fill="#444">{10.0 ** decade:g}</text>')
    parts.append(f'<text x="2" y="{pad_t + 8}" fill="#444">{int(peak)}</text>')
    parts.append(f'<text x="{width - pad_r}" y="{pad_t + 8}" text-anchor="end" fill="#666">|activation| (log)</text>')
    parts.append("</svg>")
    return head + "".join(parts)
