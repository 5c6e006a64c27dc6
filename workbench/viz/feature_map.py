"""The UMAP map of an SAE's decoder directions as a HoloViews scatter plot.

Each point is a latent, coloured by log10 firing density; hovering shows its index, top
token and density. The app attaches a Tap stream to the points to open the clicked
latent; `selection_marker` draws a ring around the open one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def feature_map(xy: np.ndarray, density: np.ndarray, labels: Sequence[str] | None = None, *,
                width: int = 620, height: int = 460, title: str = ""):
    """hv.Points of the latents at xy [F, 2], coloured by log10 density [F], with hover and tap tools."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the backend, so .opts works without hv.extension)

    xy = np.asarray(xy, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or density.shape != (xy.shape[0],):
        raise ValueError(f"xy must be [F, 2] and density [F]; got {xy.shape} and {density.shape}")
    n = xy.shape[0]
    labels = list(labels) if labels is not None else [""] * n
    data = {"x": xy[:, 0], "y": xy[:, 1], "feature": np.arange(n),
            "log10_density": np.log10(np.clip(density, 1e-7, None)), "top_token": labels}
    return hv.Points(data, kdims=["x", "y"], vdims=["feature", "log10_density", "top_token"]).opts(
        color="log10_density", cmap="viridis", size=4, alpha=0.8, colorbar=True, tools=["hover", "tap"],
        width=width, height=height, xaxis=None, yaxis=None, title=title, nonselection_alpha=0.8,
        clabel="log10 density",
    )


def selection_marker(xy: np.ndarray, index: int | None):
    """A red ring around latent `index` on the map (empty when None)."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401

    points = {"x": [], "y": []}
    if index is not None and 0 <= index < len(xy):
        points = {"x": [float(xy[index, 0])], "y": [float(xy[index, 1])]}
    return hv.Points(points, kdims=["x", "y"]).opts(marker="circle", size=16, fill_alpha=0, line_color="red",
                                                    line_width=2.5)


def nearest_point(xy: np.ndarray, x: float, y: float) -> int:
    """Index of the point closest to (x, y) (what a click on the map selects)."""
    xy = np.asarray(xy, dtype=np.float64)
    return int(np.argmin((xy[:, 0] - x) ** 2 + (xy[:, 1] - y) ** 2))
