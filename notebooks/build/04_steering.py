"""Build and execute notebooks/04_steering.ipynb (steering tutorial, nbval-checked).

Usage (from the repo root; the SAE must be registered, the shipped one or via
WORKBENCH_SAE_DIRS; run scripts/score_features.py first so the output scores are stored,
else the notebook computes them, about a minute on CPU):

    .venv/bin/python notebooks/build/04_steering.py [--no-execute]

Cells whose printed output is deterministic carry `# NBVAL_CHECK_OUTPUT`; plots, timings
and generated text carry `# NBVAL_IGNORE_OUTPUT` (greedy text can differ between CPUs).
Check: .venv/bin/python -m pytest -q --nbval-lax --nbval-current-env notebooks/04_steering.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import notebook_builder  # beside this script

NOTEBOOK = Path(__file__).resolve().parents[1] / "04_steering.ipynb"

CELLS: list[tuple[str, str]] = [
    ("md", """# 04 · Steering with SAE features and vectors

Steering adds a direction to the residual stream while the model generates. This notebook:

1. ranks every feature of the shipped layer-15 SAE of SmolLM2-135M by its **output score**
   (Arad, Mueller & Belinkov, *SAEs Are Good for Steering – If You Select the Right Features*):
   features that make the model *say* their logit-lens tokens steer best;
2. picks a concept feature by output score and steers with it (baseline and steered text from one call);
3. shows the three position modes and counts where the edit fires;
4. builds a **difference-in-means** vector for the same concept and compares both in a
   dose-response sweep (concept score vs fluency) against random directions of equal norm;
5. drives the same experiment with ipywidgets sliders.

Coefficients are in units of the site's *typical token norm* (the median residual norm at
layer 15), so `coef 1` adds a vector as long as a typical token's activation."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
import warnings
warnings.filterwarnings("ignore", message=".*which nnsight already serves.*")
import torch
import workbench as wb
from workbench.catalog import default_sae
from workbench.steering import (AddFeature, AddVector, diff_in_means, dose_response, read_scores, steer,
                                typical_norm, word_token_ids)
from workbench.steering.resolve import open_sae
from workbench.steering.scores import logit_lens_logits, logit_lens_tokens, output_scores

model = wb.load_model("smollm2-135m")
entry = default_sae(model.name)
assert entry is not None, "register the shipped SAE (data/saes/smollm2-135m/) or set WORKBENCH_SAE_DIRS"
_, sae = open_sae(model, entry.name)
site = sae.cfg.site
print(model)
print(entry.name, site, "d_sae", sae.cfg.d_sae, "k", sae.cfg.k)
print("typical norm at", site, "=", round(typical_norm(model, site), 1))"""),
    ("md", """## Output scores of every feature

For feature *f*: on the neutral prompt `"From my experience,"` add 10 × the largest latent
activation to *f*'s code at the last token (keeping the SAE error), then read the next-token
distribution *p*. With *T* = the feature's top-20 logit-lens tokens:

  output score = (1 − best rank of *T* / |V|) × max_{t∈T} p(t)

`scripts/score_features.py` computes it for whole SAEs (batched, ~1 min for 8192 features on
CPU) and stores it beside the feature store; here we read the stored column."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
import time
stored = read_scores(entry.feature_store, sae.cfg.d_sae)
if "output_score" in stored:
    scores = stored["output_score"]
    print("output scores read from", entry.feature_store.with_suffix(".scores.safetensors").name)
else:  # not scored yet: compute them now (about a minute on CPU)
    started = time.perf_counter()
    scores = output_scores(model, sae, batch_size=128).scores
    print(f"output scores computed in {time.perf_counter() - started:.0f} s")
input_scores = stored.get("input_score")"""),
    ("code", """# NBVAL_CHECK_OUTPUT
top20 = torch.nan_to_num(scores, nan=-1.0).argsort(descending=True)[:20]
lens20 = logit_lens_logits(model, sae, top20).topk(6, dim=-1).indices
print(f"{'rank':>4} {'feature':>7} {'output':>7} {'input':>6}  top logit-lens tokens")
for rank, (f, tokens) in enumerate(zip(top20.tolist(), lens20.tolist()), 1):
    inp = "" if input_scores is None or torch.isnan(input_scores[f]) else f"{float(input_scores[f]):.2f}"
    words = ", ".join(repr(model.tokenizer.decode([t])) for t in tokens)
    print(f"{rank:>4} {f:>7} {float(scores[f]):>7.3f} {inp:>6}  {words}")"""),
    ("md", """## Pick a concept feature by output score

Among a few everyday concepts, find the features whose top-20 logit-lens tokens contain the
word, and keep the concept whose best such feature has the highest output score."""),
    ("code", """# NBVAL_CHECK_OUTPUT
lens = logit_lens_tokens(model, sae)  # [d_sae, 20]
CONCEPTS = ["food", "water", "music", "game", "war", "love", "money", "science", "weather", "city",
            "health", "computer", "school", "sea", "god", "dog", "sport", "art", "travel", "family"]

best = []
for word in CONCEPTS:
    ids = word_token_ids(model.tokenizer, word, strict=False)  # spellings that are one token
    hits = torch.isin(lens, torch.tensor(ids or [-1])).any(dim=1).nonzero().flatten()
    if len(hits):
        f = int(hits[torch.nan_to_num(scores[hits], nan=-1.0).argmax()])
        best.append((float(scores[f]), word, f))
best.sort(reverse=True)
for score, word, f in best[:5]:
    print(f"{word:<10} feature {f:>5}  output score {score:.3f}")
_, concept, feature = best[0]
print("chosen:", concept, "-> feature", feature)
print("its logit-lens tokens:", [model.tokenizer.decode([t]) for t in lens[feature, :10].tolist()])"""),
    ("md", """## Steer with it

`steer` generates the baseline and the steered continuation in one call: each arm is its own
greedy generation with the same settings (and the same seed when sampling), so the only
difference is the edit. Changed tokens are marked."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
from IPython.display import HTML, display
from workbench.viz.steering import side_by_side_html

prompt = "From my experience,"
result = steer(model, prompt, [AddFeature(sae, feature, 1.0)], max_new_tokens=24)
display(HTML(side_by_side_html(prompt, result.baseline_tokens[0], result.baseline_changed[0],
                               result.steered_tokens[0], result.steered_changed[0],
                               steered_title="; ".join(result.interventions))))
print("baseline:", repr(result.baseline[0]))
print("steered: ", repr(result.steered[0]))"""),
    ("md", """## Where the edit fires

With the KV cache, step 0 (the prefill) sees the whole prompt and each later step one new
token. The three modes name the positions explicitly; `applied` counts the vectors edited
per step (prompt tokens at step 0, then one per step)."""),
    ("code", """# NBVAL_CHECK_OUTPUT
n_prompt = len(model.tokenizer(prompt)["input_ids"])
print("prompt tokens:", n_prompt)
for mode in ["all", "from:-1", "generated"]:
    r = steer(model, prompt, [AddFeature(sae, feature, 1.0)], max_new_tokens=6, positions=mode)
    print(f"{mode:<10} edits per step {r.applied[site]}")"""),
    ("md", """## A difference-in-means vector for the same concept

The supervised baseline: the mean layer-15 activation of prompts that mention the concept minus
that of the same prompts with a neutral word."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
TEMPLATES = ["I love {}.", "Let me tell you about {}.", "This article is about {}.", "We talked about {} all day.",
             "My favourite topic is {}.", "Everyone here cares about {}."]
positive = [t.format(concept) for t in TEMPLATES]
negative = [t.format("this") for t in TEMPLATES]
dim = diff_in_means(model, site, positive, negative)
cos = torch.nn.functional.cosine_similarity(dim, sae.W_dec[feature].float(), dim=0)
print("diff-in-means vector:", tuple(dim.shape), f"norm {dim.norm():.1f}",
      f"({dim.norm() / typical_norm(model, site):.2f} typical norms)")
print(f"cosine with the feature's decoder row: {cos:.3f}")"""),
    ("md", """## Dose-response: concept score vs fluency

For each coefficient: the **concept score** (probability the steered model puts on the concept
word's tokens, averaged over generated steps and prompts) and **perplexity** of the generated text
under the unsteered model (fluency), plus the repetition rate. Each target gets a random direction
of equal norm as a control, swept over the same coefficients. Greedy arms run batched."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
sweep = dose_response(model, ["From my experience,", "The weekend was"],
                      [AddFeature(sae, feature, 1.0, label=f"feature {feature}"),
                       AddVector(site, dim, 1.0, label="diff-in-means")],
                      coefs=[0.0, 0.25, 0.5, 1.0, 2.0], concept_words=[concept], max_new_tokens=12)
print(f"{len(sweep.points)} points in {sweep.seconds:.0f} s")
print(f"{'series':<28} {'coef':>5} {'concept':>8} {'ppl':>8} {'rep':>5}")
for row in sweep.rows():
    print(f"{row['series']:<28} {row['coef']:>5g} {row['concept']:>8.4f} {row['perplexity']:>8.1f} "
          f"{row['repetition']:>5.2f}")"""),
    ("code", """# NBVAL_CHECK_OUTPUT
def best_concept(series):
    return max(p.concept for p in sweep.points if p.series == series)

for target in (f"feature {feature}", "diff-in-means"):
    control = f"random ({target})"
    base = sweep.baselines[target].concept
    print(f"{target}: raises the concept score by more than 0.01: {best_concept(target) > base + 0.01}; "
          f"beats its random control: {best_concept(target) > best_concept(control)}")"""),
    ("md", """The best coefficient of each target: the highest concept score whose perplexity stays
within 4x the unsteered text's. Their continuations side by side:"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
def best_point(series):
    base = sweep.baselines[series]
    fluent = [p for p in sweep.points if p.series == series and p.coef > 0 and p.perplexity <= 4 * base.perplexity]
    candidates = fluent or [p for p in sweep.points if p.series == series and p.coef > 0]
    return max(candidates, key=lambda p: p.concept)

for series in (f"feature {feature}", "diff-in-means"):
    p = best_point(series)
    print(f"{series} x {p.coef:g}: concept {p.concept:.4f}, perplexity {p.perplexity:.1f}")
    for prompt_text, text in zip(sweep.prompts, p.texts):
        print(f"   {prompt_text!r} -> {text!r}")"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
import holoviews as hv
from workbench.viz.steering import dose_response_plot
hv.extension("bokeh")
dose_response_plot(sweep.rows(), units="norm")"""),
    ("md", """## The same experiment with sliders

`SteeringWidget` is the ipywidgets shell over the view-model the app's Steering page uses:
one slider per feature, a positions menu, Generate and Sweep buttons. Headless (as here under
nbval) the same actions run from code: set a slider, call the handler."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
from workbench.widgets.steering import SteeringWidget
w = SteeringWidget(model, features=[feature], sae_name=entry.name, prompt="The weekend was", max_new_tokens=24)
w"""),
    ("code", """# NBVAL_CHECK_OUTPUT
w.sliders[feature].value = 0.8
ok = w.on_generate()
print("generated:", ok, "| coefficient in the view-model:", w.vm.features[0]["coef"])
print(len(w.vm.last_result.steered_tokens[0]), "tokens; steered differs from baseline:",
      w.vm.steered_text != w.vm.baseline_text)"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
print(w.vm.summary)
print("baseline:", repr(w.vm.baseline_text))
print("steered: ", repr(w.vm.steered_text))"""),
    ("md", """## From the command line

```
workbench steer --model smollm2-135m --sae batchtopk-l15-8k --feature F --coef 4 \\
    --prompt "From my experience," --max-new-tokens 32 --positions all --json
```
prints both continuations; with `--json` the last line is a JSON object with `baseline` and
`steered`. The app's Steering page (`workbench app`, then *Steering*) offers the same
controls, and a feature card's "steer with this" link opens it on that feature."""),
]


def main(argv: list[str] | None = None) -> int:
    return notebook_builder.main(CELLS, NOTEBOOK, __doc__, argv, timeout=1200)


if __name__ == "__main__":
    sys.exit(main())
