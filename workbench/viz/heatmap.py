"""Heat maps of per-token, per-layer quantities (e.g. residual-stream norms)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def token_labels(tokens: Sequence[str]) -> list[str]:
    """Unique, readable x-axis labels: "position:token" (repeated tokens stay distinct)."""
    return [f"{i} {t.strip() or repr(t)}" for i, t in enumerate(tokens)]


def layer_token_heatmap(values: np.ndarray, tokens: Sequence[str], *, title: str = "",
                        value_label: str = "norm", log_color: bool = True, width: int = 900,
                        height: int = 420):
    """A HoloViews HeatMap of values [n_layers, n_tokens] with tokens on x and layers on y.

    Hovering shows the token, the layer and the value. The colour scale is logarithmic by
    default: attention-sink tokens carry norms ~100x the rest and would flatten a linear one.
    """
    import holoviews as hv

    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(tokens):
        raise ValueError(f"values must be [layers, {len(tokens)}], got {values.shape}")
    labels = token_labels(tokens)
    rows = [(labels[t], layer, float(values[layer, t])) for layer in range(values.shape[0])
            for t in range(values.shape[1])]
    heatmap = hv.HeatMap(rows, kdims=["token", "layer"], vdims=[value_label])
    return heatmap.opts(
        title=title, cmap="viridis", colorbar=True, logz=log_color and bool((values > 0).all()), tools=["hover"], width=width, height=height,
        xrotation=60, invert_yaxis=False, toolbar="above", ylabel="layer", xlabel="token",
        yticks=list(range(values.shape[0])) if values.shape[0] <= 32 else None,
    )
