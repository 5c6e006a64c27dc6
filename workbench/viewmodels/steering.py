"""View-model of the Steering page and widget: prompt, chosen features with coefficients,
positions mode, baseline vs steered continuations, and the dose-response sweep.

GUI-free (param only): the Panel page and the ipywidgets shell both bind to it. Heavy
calls (`generate`, `sweep`, `search`) block; shells run them off the UI thread and poll
`progress` (0..100) while they run. Every request goes through the engine, which holds
the model's lock, so requests from several sessions are serialised, never interleaved.
Bad input never raises out of these methods: it lands in `error` as a message for people.
"""

from __future__ import annotations

import threading

import param
import torch

from workbench.errors import WorkbenchError

MAX_FEATURES = 8
MAX_PROMPT_CHARS = 2000
MAX_SEARCH_RESULTS = 25
SLIDER_RANGE = {"norm": (-10.0, 10.0), "raw": (-200.0, 200.0)}
DEFAULT_COEF = {"norm": 1.0, "raw": 20.0}
DEFAULT_PROMPT = "From my experience,"

_lens_cache: dict[int, torch.Tensor] = {}
_lens_lock = threading.Lock()


def _cached_lens(model, sae) -> torch.Tensor:
    """Top-20 logit-lens tokens of every feature of an SAE, computed once per process."""
    from workbench.steering.scores import logit_lens_tokens

    with _lens_lock:
        if id(sae) in _lens_cache:
            return _lens_cache[id(sae)]
    lens = logit_lens_tokens(model, sae)
    with _lens_lock:
        _lens_cache[id(sae)] = lens
    return lens


class SteeringViewModel(param.Parameterized):
    """State and actions of a steering experiment on one model.

    Features are dicts {"index": int, "coef": float, "label": str} of the chosen SAE.
    After `generate()`: baseline / steered texts, `compare_html` (side by side, changed
    tokens marked) and `summary`. After `sweep()`: `sweep_rows` (DoseResponse.rows()).
    """

    prompt = param.String(default=DEFAULT_PROMPT, doc="the prompt to continue")
    sae_name = param.Selector(default=None, objects=[], allow_None=True, doc="registered SAE of the model")
    feature_id = param.String(default="", doc="last feature opened by id (MODEL/SITE/SAE/INDEX), synced to the URL")
    features = param.List(default=[], doc="chosen features: dicts with index, coef, label")
    units = param.Selector(default="norm", objects=["norm", "raw"], doc="coefficient units")
    positions_mode = param.Selector(default="all", objects=["all", "from", "generated"], doc="which positions to edit")
    from_position = param.Integer(default=-1, doc="first edited position for mode 'from' (negative: from the end)")
    max_new_tokens = param.Integer(default=32, bounds=(1, 128), doc="tokens to generate")
    seed = param.Integer(default=0, bounds=(0, 2**31 - 1), doc="sampling seed")
    do_sample = param.Boolean(default=False, doc="sample instead of greedy decoding")
    query = param.String(default="", doc="feature search: an index, or a word the feature promotes")
    search_results = param.List(default=[], doc="(index, description) pairs")
    sweep_coefs = param.String(default="0, 0.5, 1, 2, 4", doc="comma-separated sweep coefficients")
    sweep_words = param.String(default="", doc="optional concept words for the sweep (comma-separated)")

    baseline_text = param.String(default="", doc="baseline continuation")
    steered_text = param.String(default="", doc="steered continuation")
    compare_html = param.String(default="", doc="both continuations side by side, changed tokens marked")
    summary = param.String(default="", doc="one line about the last generation")
    sweep_rows = param.List(default=[], doc="dose-response rows of the last sweep")
    sweep_summary = param.String(default="", doc="one line about the last sweep")
    error = param.String(default="", doc="message for the user when the input was bad")
    busy = param.Boolean(default=False, doc="True while a request runs")
    progress = param.Integer(default=0, bounds=(0, 100), doc="progress of the running request")

    def __init__(self, model, **params):
        from workbench.catalog import default_sae, list_saes

        super().__init__(**params)
        self.model = model
        self.last_result = None
        self.last_sweep = None
        names = [e.name for e in list_saes(model.name)]
        self.param.sae_name.objects = names
        if self.sae_name is None and names:
            default = default_sae(model.name)
            self.sae_name = default.name if default is not None else names[0]

    # ------------------------------------------------------------------ helpers
    def _sae(self):
        from workbench.steering.resolve import open_sae

        if not self.sae_name:
            raise WorkbenchError(f"no SAE is registered for {self.model.name}; add one under data/saes/"
                                 f"{self.model.name}/ or $WORKBENCH_SAE_DIRS")
        return open_sae(self.model, self.sae_name)

    def _run(self, action) -> bool:
        """Run an action, turning bad input into `error`; True on success."""
        self.busy, self.progress, self.error = True, 0, ""
        try:
            action()
        except WorkbenchError as error:
            self.error = str(error)
            return False
        finally:
            self.busy = False
        self.progress = 100
        return True

    def _report(self, done: int, total: int) -> None:
        self.progress = int(100 * done / max(total, 1))

    def positions_spec(self) -> str:
        return f"from:{self.from_position}" if self.positions_mode == "from" else self.positions_mode

    def feature_label(self, index: int) -> str:
        """'#index: top logit-lens tokens' of the current SAE."""
        entry, sae = self._sae()
        lens = _cached_lens(self.model, sae)
        tokens = ", ".join(repr(self.model.tokenizer.decode([t]).strip() or "·") for t in lens[index, :5].tolist())
        return f"#{index}: {tokens}"

    # ------------------------------------------------------------------ feature list
    def add_feature(self, index, coef: float | None = None) -> bool:
        """Add a feature of the current SAE (no-op if present); False with `error` on bad input."""
        return self._run(lambda: self._add_feature(index, coef))

    def _add_feature(self, index, coef: float | None) -> None:
        from workbench.steering.interventions import check_coef, check_feature

        _, sae = self._sae()
        feature = check_feature(sae, index)
        value = check_coef(DEFAULT_COEF[self.units] if coef is None else coef, self.units)
        if any(f["index"] == feature for f in self.features):
            return
        if len(self.features) >= MAX_FEATURES:
            raise WorkbenchError(f"at most {MAX_FEATURES} features at once; remove one first")
        self.features = [*self.features, {"index": feature, "coef": value, "label": self.feature_label(feature)}]

    def remove_feature(self, index: int) -> None:
        self.features = [f for f in self.features if f["index"] != index]

    def set_coef(self, index: int, coef: float) -> bool:
        from workbench.steering.interventions import check_coef

        def action():
            value = check_coef(coef, self.units)
            self.features = [{**f, "coef": value} if f["index"] == index else f for f in self.features]

        return self._run(action)

    def open_feature_id(self, feature_id: str) -> bool:
        """Select the SAE of a feature id and add the feature (the "steer with this" link)."""
        from workbench.steering.resolve import feature_from_id

        def action():
            entry, _, index = feature_from_id(self.model, feature_id)
            if entry.name != self.sae_name:
                self.features = []
                self.sae_name = entry.name
            self.feature_id = feature_id
            self._add_feature(index, None)

        return self._run(action)

    @param.depends("sae_name", watch=True)
    def _sae_changed(self) -> None:
        self.features, self.search_results = [], []

    @param.depends("units", watch=True)
    def _units_changed(self) -> None:  # a coefficient means something else in the other unit
        self.features = [{**f, "coef": DEFAULT_COEF[self.units]} for f in self.features]

    # ------------------------------------------------------------------ search
    def search(self) -> bool:
        """Fill `search_results`: an index finds that feature; a word finds the features whose
        top logit-lens tokens contain it (best output score first when scores are stored),
        then those that fire most on it in the feature store (when harvested); an empty
        query lists the top features by output score."""
        return self._run(self._search)

    def _search(self) -> None:
        from workbench.steering.interventions import check_feature
        from workbench.steering.scores_store import read_scores

        entry, sae = self._sae()
        query = self.query.strip()
        scores = read_scores(entry.feature_store, sae.cfg.d_sae).get("output_score")
        if query.lstrip("-").isdigit():
            hits = [check_feature(sae, int(query))]
        elif not query:
            if scores is None:
                raise WorkbenchError("type a feature index or a word (no output scores are stored for this SAE yet)")
            order = torch.nan_to_num(scores, nan=-1.0).argsort(descending=True)
            hits = order[:MAX_SEARCH_RESULTS].tolist()
        else:
            from workbench.steering.evaluation import word_token_ids

            lens = _cached_lens(self.model, sae)
            ids = word_token_ids(self.model.tokenizer, query, strict=False) or [-1]
            match = torch.isin(lens, torch.tensor(ids))
            rows = match.any(dim=1).nonzero().flatten()
            # rank: by output score when stored, else by how high the word sits in the lens list
            first = match.float().argmax(dim=1)
            key = (-torch.nan_to_num(scores[rows], nan=-1.0)) if scores is not None else first[rows].float()
            hits = rows[key.argsort()][:MAX_SEARCH_RESULTS].tolist()
            fires = self._fires_on(entry, query, exclude=set(hits))
            if not hits and not fires:
                raise WorkbenchError(f"no feature of {entry.name} has {query!r} among its top logit-lens tokens "
                                     "(nor fires on it in the feature store); try another word or an index")
        results = []
        for index in hits:
            label = self.feature_label(index)
            if scores is not None and not torch.isnan(scores[index]):
                label += f"  (output score {float(scores[index]):.3f})"
            results.append((int(index), label))
        if query and not query.lstrip("-").isdigit():
            results += [(index, self.feature_label(index) + f"  (fires on {query!r})") for index in fires]
        self.search_results = results

    def _fires_on(self, entry, query: str, exclude: set[int], limit: int = 10) -> list[int]:
        """Features that fire most on the token `query` in the harvested feature store (the
        features engineer's token index), when the store exists; [] otherwise."""
        if not entry.feature_store.is_file():
            return []
        from workbench.features.search import features_by_token
        from workbench.features.store import FeatureStore

        try:
            with FeatureStore(entry.feature_store, model=self.model.name) as store:
                rows = features_by_token(store, query, limit=limit)
        except WorkbenchError:  # the token is not in the harvested text: only the logit-lens hits count
            return []
        return [int(r["feature"]) for r in rows if int(r["feature"]) not in exclude]

    # ------------------------------------------------------------------ actions
    def interventions(self) -> list:
        from workbench.steering.interventions import AddFeature

        _, sae = self._sae()
        if not self.features:
            raise WorkbenchError("choose at least one feature (search, or open one from a feature card)")
        return [AddFeature(sae, f["index"], f["coef"], units=self.units) for f in self.features]

    def _check_prompt(self) -> str:
        prompt = self.prompt
        if not prompt.strip():
            raise WorkbenchError("type a prompt first")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise WorkbenchError(f"the prompt has {len(prompt)} characters; the cap is {MAX_PROMPT_CHARS}")
        return prompt

    def generate(self) -> bool:
        """Baseline and steered continuations of the prompt with the chosen features."""
        return self._run(self._generate)

    def _generate(self) -> None:
        from workbench.steering.continuations import steer
        from workbench.viz.steering import side_by_side_html

        prompt = self._check_prompt()
        result = steer(self.model, prompt, self.interventions(), max_new_tokens=self.max_new_tokens,
                       positions=self.positions_spec(), seed=self.seed, do_sample=self.do_sample,
                       progress=self._report)
        self.last_result = result
        self.baseline_text, self.steered_text = result.baseline[0], result.steered[0]
        title = "Steered: " + "; ".join(result.interventions)
        self.compare_html = side_by_side_html(prompt, result.baseline_tokens[0], result.baseline_changed[0],
                                              result.steered_tokens[0], result.steered_changed[0],
                                              steered_title=title)
        changed = sum(result.steered_changed[0])
        self.summary = (f"{len(result.steered_tokens[0])} tokens generated, {changed} changed by steering "
                        f"(positions {result.positions}, {result.seconds:.1f} s)")

    def parse_coefs(self) -> list[float]:
        try:
            coefs = [float(c) for c in self.sweep_coefs.replace(";", ",").split(",") if c.strip()]
        except ValueError:
            raise WorkbenchError(f"cannot read the coefficients {self.sweep_coefs!r}; write numbers separated "
                                 "by commas, e.g. 0, 0.5, 1, 2") from None
        if not coefs:
            raise WorkbenchError("give at least one coefficient")
        return coefs

    def sweep(self) -> bool:
        """Dose-response sweep of the chosen features (and a random control) over `sweep_coefs`."""
        return self._run(self._sweep)

    def _sweep(self) -> None:
        from workbench.steering.evaluation import dose_response

        prompt = self._check_prompt()
        words = [w.strip() for w in self.sweep_words.split(",") if w.strip()] or None
        result = dose_response(self.model, prompt, self.interventions(), self.parse_coefs(), concept_words=words,
                               max_new_tokens=min(self.max_new_tokens, 64), positions=self.positions_spec(),
                               seed=self.seed, progress=self._report)
        self.last_sweep = result
        self.sweep_rows = result.rows()
        targets = [p for p in result.points if p.kind == "target"]
        best = max(targets, key=lambda p: p.concept)
        # a repetitive loop is easy to predict, so low perplexity alone does not mean fluent text
        fluent = [p for p in targets if p.repetition <= 0.5]
        best_fluent = max(fluent, key=lambda p: p.concept) if fluent else None
        self.sweep_summary = (
            f"{len(result.points)} points in {result.seconds:.1f} s; highest concept score {best.concept:.3f} "
            f"({best.series} x {best.coef:g}, perplexity {best.perplexity:.1f}, repetition {best.repetition:.2f})"
            + (f"; without loops (repetition <= 0.5): {best_fluent.concept:.3f} at {best_fluent.series} x "
               f"{best_fluent.coef:g}" if best_fluent is not None and best_fluent is not best else ""))
