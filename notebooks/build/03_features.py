"""Build and execute notebooks/03_features.ipynb (a tour of the shipped SAE's features, nbval-checked).

Usage (from the repo root; the SAE and its feature store must be registered: the shipped
ones in data/, or a development copy via WORKBENCH_SAE_DIRS):

    .venv/bin/python notebooks/build/03_features.py [--no-execute]

Cells whose printed output is deterministic (store queries) carry `# NBVAL_CHECK_OUTPUT`;
cells that run the model, and HTML/plot cells, carry `# NBVAL_IGNORE_OUTPUT`. Runs in about
a minute on CPU. Check:
    .venv/bin/python -m pytest -q --nbval-lax --nbval-current-env notebooks/03_features.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import notebook_builder  # beside this script

NOTEBOOK = Path(__file__).resolve().parents[1] / "03_features.ipynb"
UNSTORED = "(output not stored in the committed notebook"

CELLS: list[tuple[str, str]] = [
    ("md", """# 03 · Reading features

After training an SAE, the question is what each latent *means*. `workbench harvest` ran the
shipped layer-15 SAE of SmolLM2-135M over the held-out split of the offline corpus and kept,
for each of its latents, what a dashboard needs: firing density, an activation histogram, the
top activating contexts and samples from lower activation quantiles (every token with its
activation), the logit effects of its decoder direction, co-firing and nearest-decoder
neighbours, a UMAP map of all decoder directions, and which latents fire most on each token.
It is all in one SQLite file, so everything below is a query of a few milliseconds.

This tour:
1. opens the feature store of the shipped SAE,
2. finds latents for a concept three ways: by token, by running a text, by words in contexts,
3. reads one latent's card,
4. tests it on your own text,
5. looks at the map of all latents, and
6. exports a card as a self-contained HTML file.

The app's *Features* page (`workbench app`) shows the same cards."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
import warnings
warnings.filterwarnings("ignore", message=".*which nnsight already serves.*")
from IPython.display import HTML, display
import workbench as wb
from workbench.catalog import default_sae
from workbench.features import (FeatureStore, export_card_html, feature_on_text, features_by_token,
                                features_for_text, open_store, search_text)
from workbench.sae import load_sae
from workbench.viz.feature_card import feature_card_html
from workbench.viz.tokens import TOKEN_CSS, highlighted_tokens_html

model = wb.load_model("smollm2-135m")
entry = default_sae(model.name)
assert entry is not None, "register the shipped SAE (data/saes/smollm2-135m/) or set WORKBENCH_SAE_DIRS"
store = open_store(model.name, entry.name)
sae = load_sae(entry.folder, model)
print(model)
print(store)"""),
    ("code", """# NBVAL_CHECK_OUTPUT
meta = store.meta
print(f"{store.sae_name}: {meta['architecture']} SAE, {store.d_sae} latents (k={meta['k']}) at {store.site}")
print(f"harvested from {store.n_tokens:,} tokens of the {meta['corpus']!r} corpus ({meta['split']} split)")
density = store.column("density")
print(f"dead latents: {(density == 0).sum()}; median density of the live ones: {float(sorted(density[density > 0])[len(density[density > 0]) // 2]):.3%}")"""),
    ("md", """## 1 · Find latents for a concept

**By token.** During the harvest the store recorded, for every token id, the latents with the
largest mean activation on it. `score` is that mean (zeros included), `frac` the share of the
token's occurrences on which the latent fired, and `specificity` the share of the latent's own
firings that fall on this token: broad latents (high score, low specificity) fire on the
token among many others; a latent *about* the token has a high specificity."""),
    ("code", """# NBVAL_CHECK_OUTPUT
def show(rows, *extra, n=6):
    for r in rows[:n]:
        cells = [f"#{r['feature']:<5}", f"top token {r['top_token_text']!r:<14}", f"density {r['density']:.3%}"]
        cells += [f"{name} {r[name]:.3g}" if isinstance(r[name], float) else f"{name} {r[name]!r}" for name in extra]
        print("  ".join(cells))

rows = features_by_token(store, "Python")
print(f"latents that fire most on 'Python' ({rows[0]['token_count']} occurrences of ' Python' and 'Python'):")
show(rows, "score", "frac", "specificity", n=8)"""),
    ("md", """**By running a text.** `features_for_text` runs the model up to layer 15, encodes with the
SAE and ranks latents by their peak on the text relative to their largest activation in the
corpus (`score`, capped at 1), so rare, specific latents are not drowned by large-valued ones."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
rows, coded = features_for_text(store, model, sae, "To install the package, run pip install in a virtual environment.")
print(len(coded.tokens), "tokens; strongest latents relative to their corpus maximum:")
show(rows, "score", "token")"""),
    ("md", """**By words in contexts.** The store also indexes the text around each latent's top
activations (SQLite FTS5), plus any explanations you add; every word must appear."""),
    ("code", """# NBVAL_CHECK_OUTPUT
rows = search_text(store, "hacker")
print(len(rows), "latents with 'hacker' in their top contexts; the first few:")
show(rows, "where", n=4)"""),
    ("md", """## 2 · Read a latent's card

We take the most specific of the ten latents that fire most on `Python` and open its card: the figures, the
activation histogram (log-spaced bins), the tokens its decoder direction promotes and
suppresses, its top contexts (darker = stronger; hover a token for its value), samples from
lower activation quantiles, and its neighbours."""),
    ("code", """# NBVAL_CHECK_OUTPUT
feature = max(features_by_token(store, "Python")[:10], key=lambda r: (r["specificity"], r["score"]))["feature"]
card = store.card(feature)
print(card.feature_id)
print(f"density {card.density:.3%}, max activation {card.max_act:.3g}, fired in {card.n_contexts} contexts")
print("promotes:", [t for t, _ in card.top_logits[:6]])
print("top contexts (peak token in brackets):")
for example in card.examples_of("top")[:5]:
    left = "".join(example.tokens[max(0, example.peak - 8):example.peak]).replace("\\n", " ")
    print(f"  {example.value:6.2f}  ...{left}[{example.tokens[example.peak]}]")
print("co-firing:", [(n.index, n.label) for n in card.cofire_neighbours[:4]])"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
display(HTML(feature_card_html(card, max_per_kind=6)))"""),
    ("md", """## 3 · Test it on your own text

`feature_on_text` gives the latent's activation on every token of any text; the same
colour scale as the card (full colour at the latent's corpus maximum)."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
text = "I wrote a small Python script, then rewrote it in Rust; the snake in the garden was a python."
tokens, acts = feature_on_text(model, sae, feature, text)
top = int(abs(acts).argmax())
print(f"peak {acts[top]:.2f} on {tokens[top]!r}; active on {(acts != 0).sum()} of {len(tokens)} tokens")
display(HTML(f"<style>{TOKEN_CSS}</style>" + highlighted_tokens_html(tokens, acts, scale=card.max_act, peak=top)))"""),
    ("md", """The same with a small widget: type a text, press the button. (Headless runs set the
value and press the button in code; in Jupyter, just type.)"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets

box = widgets.Text(value="Python, Perl and Ruby are scripting languages.", layout=widgets.Layout(width="70%"))
button = widgets.Button(description="Show activations")
view = widgets.HTML()

def on_click(_):
    tokens, acts = feature_on_text(model, sae, feature, box.value)
    view.value = f"<style>{TOKEN_CSS}</style>" + highlighted_tokens_html(tokens, acts, scale=card.max_act)

button.on_click(on_click)
display(widgets.VBox([widgets.HBox([box, button]), view]))"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
box.value = "The Python interpreter reads the file."
button.click()
print("highlighted tokens:", view.value.count("wbf-tok"))"""),
    ("md", """## 4 · The map of all latents

UMAP of the decoder directions (cosine metric), coloured by firing density; the red ring is
the latent above. Hover a point for its index and top token; in the app a click opens it.
(The committed notebook does not store this cell's output, which embeds BokehJS and every
point: run the cell to see the map.)"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
# (output not stored in the committed notebook: run the cell)
import holoviews as hv
from workbench.viz.feature_map import feature_map, selection_marker

hv.extension("bokeh", inline=True)  # BokehJS from the local install, not a CDN
xy = store.umap_map()
labels = [r["top_token_text"] or "" for r in store.list_features("feature", limit=store.d_sae, include_dead=True)]
feature_map(xy, store.column("density"), labels, title=f"{store.sae_name}: decoder directions") * selection_marker(xy, feature)"""),
    ("md", """## 5 · Share a card

A card exports to one HTML file with inline styles and SVG: no scripts and no CDN, so it
opens offline and can be attached to a report."""),
    ("code", """# NBVAL_CHECK_OUTPUT
import tempfile
from pathlib import Path

path = export_card_html(store, feature, Path(tempfile.mkdtemp()) / f"feature-{feature}.html")
html = path.read_text()
print(path.name, "self-contained:", "<script" not in html and "http://cdn" not in html and "https://" not in html)"""),
    ("md", """## Next

* `workbench harvest SAE_DIR --model M --corpus C --tokens N --out STORE` builds a store for your
  own SAE (resumable; `--json` for scripts); register it under `data/saes/` or
  `$WORKBENCH_SAE_DIRS` to browse it in the app.
* `store.add_explanation(feature, "...")` attaches a note that `search_text` then finds.
* Notebook 04 steers the model with a latent; a card's *steer with this* link opens the app's
  Steering page on it."""),
]


def main(argv: list[str] | None = None) -> int:
    return notebook_builder.main(CELLS, NOTEBOOK, __doc__, argv, timeout=600, unstored_marker=UNSTORED)


if __name__ == "__main__":
    sys.exit(main())
