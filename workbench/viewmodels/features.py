"""View-model of the Features page (and the notebook widgets): GUI-free state and actions.

    vm = FeaturesViewModel(model)            # opens the default registered SAE's store
    vm.query, vm.search_mode = "Paris", "token"
    vm.search()                              # vm.results: rows for the sortable list
    vm.open(vm.results[0]["feature"])        # vm.card, vm.card_html, vm.feature_id
    vm.try_text = "I flew to Paris."; vm.run_try_text()   # vm.try_html

Every action catches WorkbenchError into `error` (a message for the user) and leaves the
rest of the state as it was; the page shows it without a stack trace. Only registered SAEs
(workbench.catalog) can be opened, never a path from the UI. Nothing here imports panel.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

import numpy as np
import param

from workbench.errors import WorkbenchError

SEARCH_MODES = {
    "token": "Token: latents that fire most on a token",
    "text": "Text: run a text through the model and the SAE",
    "contexts": "Words in contexts and explanations (full text)",
}
MAX_TRY_CHARS = 2000
LIST_COLUMNS = ["feature", "top_token_text", "density", "max_act", "n_contexts"]


class FeaturesViewModel(param.Parameterized):
    """State of the Features page: the open SAE, the list, the open card, the try-your-text box."""

    sae_name = param.Selector(default=None, objects=[], doc="registered SAE of the model whose features are shown")
    search_mode = param.Selector(default="token", objects=list(SEARCH_MODES), doc="how `query` is matched")
    query = param.String(default="", doc="token, text or words to search for")
    results = param.List(default=[], doc="rows of the list (features-table columns + match fields)")
    result_kind = param.String(default="all", doc='"all" (browse) or the search mode of the rows')
    feature_index = param.Integer(default=None, allow_None=True, doc="the open latent")
    feature_id = param.String(default="", doc="MODEL/SITE/SAE_NAME/INDEX of the open latent (the URL key)")
    card = param.Parameter(default=None, doc="the open FeatureCard")
    card_html = param.String(default="", doc="the open card rendered as HTML")
    try_text = param.String(default="", doc="text to test the open latent on")
    try_html = param.String(default="", doc="the latent's activations on try_text, highlighted")
    status = param.String(default="", doc="one line describing the list")
    error = param.String(default="", doc="message for the user after a bad input")

    def __init__(self, model, sae_name: str | None = None, **params):
        super().__init__(**params)
        from workbench.catalog import default_sae, list_saes

        self.model = model
        self._stores: dict[str, Any] = {}
        self._saes: dict[str, Any] = {}
        self._lock = threading.RLock()
        entries = list_saes(model.name)
        names = [e.name for e in entries]
        self.param.sae_name.objects = names
        if not names:
            self.error = (f"no SAE is registered for {model.name}: add one under data/saes/{model.name}/ "
                          "(or $WORKBENCH_SAE_DIRS) and build its feature store with `workbench harvest`")
            return
        chosen = sae_name or (default_sae(model.name).name if default_sae(model.name) else names[0])
        self.select_sae(chosen)

    # ------------------------------------------------------------------ resources
    @property
    def store(self):
        """The open SAE's FeatureStore (opened once, then cached)."""
        from workbench.features.store import open_store

        if self.sae_name is None:
            raise WorkbenchError("no SAE is open")
        with self._lock:
            if self.sae_name not in self._stores:
                self._stores[self.sae_name] = open_store(self.model.name, self.sae_name)
            return self._stores[self.sae_name]

    @property
    def sae(self):
        """The open SAE itself (loaded on the first text query; checked against the store)."""
        from workbench.catalog import get_sae
        from workbench.sae.loading import load_sae

        with self._lock:
            if self.sae_name not in self._saes:
                entry = get_sae(self.model.name, self.sae_name)
                sae = load_sae(entry.folder, self.model, check_tokens=0)
                self.store.check_sae(sae)
                self._saes[self.sae_name] = sae
            return self._saes[self.sae_name]

    def _guard(self, action, *args) -> bool:
        """Run an action; a WorkbenchError becomes `error`. Returns True on success."""
        try:
            action(*args)
        except WorkbenchError as exc:
            self.error = str(exc)
            return False
        self.error = ""
        return True

    # ------------------------------------------------------------------ SAE and list
    def select_sae(self, name: str) -> bool:
        """Open a registered SAE by name and list its latents."""
        def action():
            if name not in self.param.sae_name.objects:
                from workbench.errors import UnknownNameError

                raise UnknownNameError(f"SAE of {self.model.name}", name, self.param.sae_name.objects)
            previous = self.sae_name
            self.sae_name = name
            try:
                self._browse()
            except WorkbenchError:
                self.sae_name = previous
                raise
            self.feature_index, self.feature_id, self.card, self.card_html, self.try_html = None, "", None, "", ""
        return self._guard(action)

    def _browse(self) -> None:
        store = self.store
        self.results = store.list_features("max_act", limit=store.d_sae, include_dead=True)
        self.result_kind = "all"
        dead = sum(1 for r in self.results if r["n_fired"] == 0)
        self.status = (f"{store.d_sae:,} latents of {store.sae_name} at {store.site} ({dead:,} dead), harvested "
                       f"from {store.n_tokens:,} tokens")

    def browse(self) -> bool:
        """List every latent of the open SAE (sorted by max activation)."""
        return self._guard(self._browse)

    def columns(self) -> list[str]:
        """Columns the list shows: the basics, the match fields of a search, present steering scores."""
        columns = list(LIST_COLUMNS)
        if self.result_kind == "token":
            columns += ["score", "frac", "specificity", "token"]
        elif self.result_kind == "text":
            columns += ["score", "text_act", "token"]
        elif self.result_kind == "contexts":
            columns += ["score", "where", "snippet"]
        if self.sae_name is not None:
            columns += [name for name, present in self.store.has_scores().items() if present]
        return columns

    # ------------------------------------------------------------------ search
    def search(self) -> bool:
        """Run `query` in `search_mode`; fills `results` (best match first) and `status`."""
        from workbench.features import search

        def action():
            query = self.query
            if not query or not query.strip():
                raise WorkbenchError("the search is empty: type a token, a text or some words")
            store = self.store
            if self.search_mode == "token":
                rows = search.features_by_token(store, query)
                self.status = (f"{len(rows)} latents firing most on {rows[0]['token']!r} "
                               f"({rows[0]['token_count']:,} occurrences)" if rows else "no latents")
            elif self.search_mode == "text":
                rows, result = search.features_for_text(store, self.model, self.sae, query)
                self.status = f"{len(rows)} latents active on your text ({len(result.tokens)} tokens), strongest first"
            else:
                rows = search.search_text(store, query)
                self.status = f"{len(rows)} latents whose top contexts or explanations match {query.strip()!r}"
            self.results, self.result_kind = rows, self.search_mode
        return self._guard(action)

    # ------------------------------------------------------------------ the card
    def open(self, index: Any) -> bool:
        """Open latent `index` of the current SAE: card, card_html, feature_id."""
        def action():
            from workbench.viz.feature_card import feature_card_html

            store = self.store
            i = store.check_index(index)
            card = store.card(i)
            self.card, self.feature_index = card, i
            self.card_html = feature_card_html(card, link=self.feature_link, steer_link=self.steer_link(i))
            self.feature_id = store.feature_id(i)
            self.try_html = ""
        return self._guard(action)

    def open_feature_id(self, feature_id: str) -> bool:
        """Open `MODEL/SITE/SAE_NAME/INDEX` (switching SAE when needed); clear errors for bad ids."""
        from workbench.catalog import get_sae, parse_feature_id
        from workbench.errors import UnknownNameError

        def action():
            model, site, sae_name, index = parse_feature_id(feature_id)
            if model != self.model.name:
                raise WorkbenchError(f"{feature_id} belongs to model {model}, but the app runs {self.model.name}")
            entry = get_sae(model, sae_name)
            if entry.site != site:
                raise UnknownNameError(f"site of SAE {sae_name}", site, [entry.site])
            if sae_name != self.sae_name and not self.select_sae(sae_name):
                raise WorkbenchError(self.error)
            if not self.open(index):
                raise WorkbenchError(self.error)
        return self._guard(action)

    def feature_link(self, index: int) -> str:
        """The app URL (query part) that opens latent `index` of the current SAE."""
        return "?page=features&feature=" + quote(self.store.feature_id(index), safe="/.-_")

    def steer_link(self, index: int) -> str:
        """The Steering page URL for latent `index`."""
        return "?page=steering&feature=" + quote(self.store.feature_id(index), safe="/.-_")

    # ------------------------------------------------------------------ try your own text
    def run_try_text(self) -> bool:
        """The open latent's activation on every token of `try_text` (highlighted into try_html)."""
        from workbench.features.search import feature_on_text
        from workbench.viz.tokens import TOKEN_CSS, color_legend_html, highlighted_tokens_html

        def action():
            if self.feature_index is None:
                raise WorkbenchError("open a feature first")
            text = self.try_text
            if not text or not text.strip():
                raise WorkbenchError("type a text to test the feature on")
            if len(text) > MAX_TRY_CHARS:
                raise WorkbenchError(f"the text has {len(text)} characters; the cap is {MAX_TRY_CHARS}")
            card = self.card
            skip = bool(self.store.meta.get("config", {}).get("skip_position0", True))
            tokens, acts = feature_on_text(self.model, self.sae, self.feature_index, text, skip_position0=skip)
            scale = max(card.max_act, -card.min_act, float(np.abs(acts).max()), 1e-12)
            peak = int(np.argmax(np.abs(acts)))
            summary = (f"peak {acts[peak]:.3g} on {tokens[peak]!r} ({acts[peak] / scale:.0%} of the colour scale); "
                       f"active on {int((acts != 0).sum())} of {len(tokens)} tokens")
            if skip and len(tokens) > 1:
                summary += "; the first token (attention sink) is not scored"
            self.try_html = (f"<style>{TOKEN_CSS}</style><div style='font:12px sans-serif;color:#555'>{summary} "
                             f"\u00b7 {color_legend_html(scale, card.signed)}</div>"
                             + highlighted_tokens_html(tokens, acts, scale=scale, signed=card.signed,
                                                       peak=peak if acts[peak] != 0 else None))
        return self._guard(action)

    # ------------------------------------------------------------------ map and export
    def map_data(self) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """(xy [F, 2], density [F], top-token labels) of the open SAE, or None without UMAP."""
        store = self.store
        xy = store.umap_map()
        if xy is None:
            return None
        rows = {r["feature"]: r for r in self.results} if self.result_kind == "all" else {}
        if len(rows) != store.d_sae:
            rows = {r["feature"]: r for r in store.list_features("feature", limit=store.d_sae, include_dead=True)}
        labels = [rows[i]["top_token_text"] or "" for i in range(store.d_sae)]
        return xy, store.column("density"), labels

    def card_document(self) -> str:
        """The open card as a self-contained HTML document (for download)."""
        from workbench.features.export import card_document

        if self.feature_index is None:
            raise WorkbenchError("open a feature first")
        return card_document(self.store, self.feature_index)
