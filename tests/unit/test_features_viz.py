"""Pure renderers of the feature dashboards: colour scales, token highlighting, histogram SVG,
logit and neighbour tables, the card, the UMAP map."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.features.store import Example, FeatureCard, Neighbour
from workbench.viz.feature_card import feature_card_html
from workbench.viz.feature_map import feature_map, nearest_point, selection_marker
from workbench.viz.histogram import density_histogram_svg
from workbench.viz.tables import logit_table_html, neighbours_html
from workbench.viz.tokens import activation_color, highlighted_tokens_html


def test_colour_scales():
    assert activation_color(0.0, 1.0) == "transparent"
    weak, strong = activation_color(0.1, 1.0), activation_color(5.0, 1.0)
    assert weak.startswith("rgba(242,120,0,") and strong == "rgba(242,120,0,0.900)"
    assert float(weak.split(",")[-1][:-1]) < 0.2
    assert activation_color(-0.5, 1.0, signed=True).startswith("rgba(32,110,220,")
    assert activation_color(-0.5, 1.0, signed=False).startswith("rgba(242,120,0,")  # magnitude only


def test_highlighted_tokens_escape_and_annotate():
    html = highlighted_tokens_html(["<b>", " Paris", "\n"], [0.0, 2.0, 1.0], scale=2.0, peak=1)
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("&lt;b&gt;", "")
    assert html.count('<span class="wbf-tok') == 3 and 'class="wbf-tok wbf-peak"' in html
    assert "\u21b5" in html  # the newline is visible
    assert 'title="&#x27; Paris&#x27;: 2"' in html
    with pytest.raises(ValueError, match="3 tokens but 2 activations"):
        highlighted_tokens_html(["a", "b", "c"], [1.0, 2.0])


def test_histogram_draws_only_filled_bins():
    edges = np.logspace(-2, 2, 17)
    pos = np.zeros(16, dtype=int)
    neg = np.zeros(16, dtype=int)
    pos[[5, 6, 9]] = [10, 40, 3]
    neg[7] = 8
    svg = density_histogram_svg(edges, pos, neg)
    assert svg.count("<rect") == 4 and "40 positive" in svg and "8 negative" in svg
    assert ">0.1<" in svg or ">1<" in svg  # decade ticks
    assert "never active" in density_histogram_svg(edges, np.zeros(16), np.zeros(16))


def test_tables():
    html = logit_table_html([(" Paris", 3.25), (" Rome", 2.0)], [(" the", -1.5)])
    assert "promotes" in html and "suppresses" in html and "+3.25" in html and "-1.5" in html
    assert "no logit effects" in logit_table_html([], [])
    nb = neighbours_html([Neighbour(7, 0.61, " France")], [], link=lambda i: f"?page=features&feature=m/s/x/{i}")
    assert 'href="?page=features&amp;feature=m/s/x/7"' in nb and "0.610" in nb and "<i>none</i>" in nb


def _card(signed: bool) -> FeatureCard:
    example = Example(kind="top", interval=None, token_ids=[1, 2, 3], tokens=[" a", " peak", " c"],
                      acts=np.array([0.0, 4.0, 1.0], np.float32), peak=1, value=4.0, doc=0, doc_pos=5)
    examples = [example]
    if signed:
        examples.append(Example(kind="bottom", interval=None, token_ids=[4, 5], tokens=[" x", " low"],
                                acts=np.array([0.0, -3.0], np.float32), peak=1, value=-3.0, doc=1, doc_pos=2))
    return FeatureCard(
        feature_id="m/blocks.1.hook_resid_post/sae/9", index=9, signed=signed, n_tokens=1000, n_fired=12,
        density=0.012, max_act=4.0, min_act=-3.0 if signed else 0.0, mean_act=1.5, n_contexts=9, top_token=" peak",
        hist_edges=np.logspace(-1, 1, 9), hist_pos=np.array([0, 1, 2, 3, 0, 0, 0, 0]),
        hist_neg=np.array([0, 0, 1, 0, 0, 0, 0, 0]), top_logits=[(" up", 1.0)], bottom_logits=[(" down", -1.0)],
        examples=examples, decoder_neighbours=[Neighbour(3, 0.5, " y")], cofire_neighbours=[],
        output_score=0.25,
    )


def test_feature_card_sections():
    html = feature_card_html(_card(signed=False), steer_link="?page=steering&feature=m/blocks.1.hook_resid_post/sae/9")
    assert "Feature 9" in html and "top token &#x27; peak&#x27;" in html
    assert "Top activating contexts" in html and "Most negative" not in html
    assert "steer with this" in html and "output score" in html and "1.200%" in html
    signed = feature_card_html(_card(signed=True))
    assert "Most negative contexts" in signed and "rgba(32,110,220," in signed
    dead = _card(signed=False)
    dead.n_fired, dead.examples = 0, []
    assert "never fired" in feature_card_html(dead)


def test_feature_map_and_picking():
    import holoviews as hv

    xy = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    points = feature_map(xy, np.array([0.1, 0.01, 0.0]), ["a", "b", "c"])
    assert isinstance(points, hv.Points) and len(points) == 3
    assert {d.name for d in points.dimensions()} == {"x", "y", "feature", "log10_density", "top_token"}
    assert np.isfinite(points.dimension_values("log10_density")).all()
    assert list(points.dimension_values("feature")) == [0, 1, 2]
    assert nearest_point(xy, 4.0, 4.5) == 2
    assert len(selection_marker(xy, 1)) == 1 and len(selection_marker(xy, None)) == 0
    with pytest.raises(ValueError, match="xy must be"):
        feature_map(xy, np.zeros(2))
