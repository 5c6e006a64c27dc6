"""Features page: search latents by token, text or words, list and sort them, read a latent's card,
explore the UMAP map (click a point to open it), and test a latent on your own text.

A thin Panel shell over `FeaturesViewModel`; `?page=features&feature=MODEL/SITE/SAE/INDEX`
opens a latent directly. Store reads are milliseconds; model runs (text search, try your
text) go to a worker thread with a loading indicator. Errors show as messages, never traces.
"""

from __future__ import annotations

import io

import pandas as pd
import panel as pn

from workbench.app.context import AppContext, run_off_ui_thread, user_message
from workbench.viewmodels.features import MAX_TRY_CHARS, SEARCH_MODES, FeaturesViewModel

PLACEHOLDERS = {
    "token": "a token, e.g. Paris or  the",
    "text": "a sentence; latents are ranked by how strongly they fire on it",
    "contexts": "words that appear in a latent's top contexts or explanations",
}
COLUMN_TITLES = {"feature": "latent", "top_token_text": "top token", "density": "density", "max_act": "max act",
                 "n_contexts": "contexts", "score": "match", "frac": "fires on token", "specificity": "specificity",
                 "token": "token",
                 "text_act": "act on text", "where": "found in", "snippet": "snippet",
                 "input_score": "input score", "output_score": "output score"}


def _frame(vm: FeaturesViewModel) -> pd.DataFrame:
    columns = vm.columns()
    frame = pd.DataFrame([{c: row.get(c) for c in columns} for row in vm.results], columns=columns)
    return frame.rename(columns=COLUMN_TITLES).set_index(COLUMN_TITLES["feature"])


def build(context: AppContext) -> pn.viewable.Viewable:
    import holoviews as hv
    from bokeh.models.widgets.tables import NumberFormatter

    from workbench.viz.feature_map import feature_map, nearest_point, selection_marker

    vm = FeaturesViewModel(context.model)
    intro = pn.pane.Markdown(
        f"### Features\nWhat each latent of an SAE on **{context.model.name}** responds to, from its harvested "
        "feature store: search, sort, open a card, click the map, or test a latent on your own text.")
    error = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
    if vm.sae_name is None:
        error.object, error.visible = vm.error, True
        return pn.Column(intro, error, sizing_mode="stretch_width")

    sae_select = pn.widgets.Select(name="SAE", options=list(vm.param.sae_name.objects), value=vm.sae_name, width=220)
    mode = pn.widgets.RadioButtonGroup(options={label.split(":")[0]: key for key, label in SEARCH_MODES.items()},
                                       value=vm.search_mode, button_type="light")
    query = pn.widgets.TextInput(name="Search", placeholder=PLACEHOLDERS["token"], width=360)
    search_button = pn.widgets.Button(name="Search", button_type="primary", width=90)
    browse_button = pn.widgets.Button(name="All latents", width=110)
    open_input = pn.widgets.IntInput(name="Open latent #", value=None, start=0, end=vm.store.d_sae - 1, width=130)
    status = pn.pane.Markdown(vm.status, css_classes=["wb-features-status"])
    formatters = {COLUMN_TITLES[c]: NumberFormatter(format=f) for c, f in
                  [("density", "0.000%"), ("max_act", "0.00"), ("score", "0.000"), ("frac", "0%"), ("specificity", "0%"),
                   ("text_act", "0.00"), ("input_score", "0.000"), ("output_score", "0.000")]}
    formatters[COLUMN_TITLES["feature"]] = NumberFormatter(format="0")  # latent ids without thousands commas
    # Bokeh's DataTable (not Tabulator): it needs no extra front-end bundle, so the page also works
    # when it is opened after another page (extensions load only with the first page).
    table = pn.widgets.DataFrame(_frame(vm), show_index=True, sortable=True, disabled=True, selection=[],
                                 formatters=formatters, height=380, sizing_mode="stretch_width",
                                 autosize_mode="force_fit", reorderable=False,
                                 css_classes=["wb-features-list"])
    card_pane = pn.pane.HTML("<i>Open a latent from the list, the map or by number.</i>",
                             sizing_mode="stretch_width", min_height=300)
    export = pn.widgets.FileDownload(label="Export card (HTML)", filename="feature.html", button_type="light",
                                     callback=lambda: io.StringIO(vm.card_document()), disabled=True, width=180)
    try_box = pn.widgets.TextAreaInput(name="Your text", max_length=MAX_TRY_CHARS, height=80,
                                       sizing_mode="stretch_width", placeholder="Type a text to see this latent on it")
    try_button = pn.widgets.Button(name="Show activations", button_type="primary", width=160)
    try_pane = pn.pane.HTML("", sizing_mode="stretch_width")
    map_pane = pn.pane.HoloViews(None, min_height=480, sizing_mode="stretch_width")
    map_note = pn.pane.Markdown("Click a point to open that latent; its card is in the *Card* tab.")
    marker = hv.streams.Stream.define("Selected", index=None)()
    map_state: dict = {}

    def show_error() -> None:
        error.object, error.visible = vm.error, bool(vm.error)

    def safe(callback):
        """Run a UI callback; an unexpected error becomes a message (never a stack trace)."""
        def run(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except Exception as exc:
                vm.error = user_message(exc)
                show_error()
        return run

    def refresh_list() -> None:
        table.value = _frame(vm)
        table.selection = []
        status.object = vm.status

    def refresh_card() -> None:
        card_pane.object = vm.card_html or card_pane.object
        try_pane.object = vm.try_html
        if vm.feature_index is not None:
            card = vm.card
            map_note.object = (f"Open: **#{card.index}**, top token `{card.top_token!r}`, density {card.density:.3%}, "
                               f"max {card.max_act:.3g} (full card in the *Card* tab)")
            export.disabled = False
            export.filename = f"{vm.sae_name}-{vm.feature_index}.html"
            open_input.value = vm.feature_index
            marker.event(index=vm.feature_index)

    @safe
    def open_feature(index) -> None:
        if vm.open(index):
            refresh_card()
        show_error()

    @safe
    def refresh_map() -> None:
        data = vm.map_data()
        if data is None:
            map_pane.object = None
            map_state.clear()
            return
        xy, density, labels = data
        points = feature_map(xy, density, labels, title=f"UMAP of {vm.sae_name}'s decoder directions (click a point)")
        tap = hv.streams.Tap(source=points, x=None, y=None)

        def on_tap(x=None, y=None):
            if x is not None and y is not None:
                open_feature(nearest_point(xy, x, y))

        tap.add_subscriber(on_tap)
        map_state.update(tap=tap, xy=xy)
        ring = hv.DynamicMap(lambda index: selection_marker(xy, index), streams=[marker])
        map_pane.object = points * ring

    async def run_search(*_):
        vm.query, vm.search_mode = query.value_input or query.value, mode.value
        table.loading = True
        try:
            await run_off_ui_thread(vm.search)
        except Exception as exc:  # the page never shows a stack trace
            vm.error = user_message(exc)
        finally:
            table.loading = False
        show_error()
        if not vm.error:
            refresh_list()

    @safe
    def on_browse(*_):
        vm.browse()
        show_error()
        refresh_list()

    def on_select(event) -> None:
        if event.new:
            open_feature(int(table.value.index[event.new[0]]))
            tabs.active = 0  # show the card

    def on_open_input(event) -> None:
        if event.new is not None and event.new != vm.feature_index:
            open_feature(event.new)

    @safe
    def on_sae(event) -> None:
        if vm.select_sae(event.new):
            refresh_list()
            card_pane.object = "<i>Open a latent from the list, the map or by number.</i>"
            export.disabled = True
            open_input.end = vm.store.d_sae - 1
            refresh_map()
        show_error()

    def on_mode(event) -> None:
        query.placeholder = PLACEHOLDERS[event.new]

    async def run_try(*_):
        vm.try_text = try_box.value_input or try_box.value
        try_pane.loading = True
        try:
            await run_off_ui_thread(vm.run_try_text)
        except Exception as exc:
            vm.error = user_message(exc)
        finally:
            try_pane.loading = False
        show_error()
        try_pane.object = vm.try_html

    @safe
    def on_feature_id(event) -> None:  # the URL changed (?feature=...)
        if event.new and (vm.card is None or vm.card.feature_id != event.new):
            if vm.open_feature_id(event.new):
                sae_select.value = vm.sae_name
                refresh_card()
            show_error()

    search_button.on_click(run_search)
    query.param.watch(run_search, "enter_pressed")
    browse_button.on_click(on_browse)
    table.param.watch(on_select, "selection")
    open_input.param.watch(on_open_input, "value")
    sae_select.param.watch(on_sae, "value")
    mode.param.watch(on_mode, "value")
    try_button.on_click(run_try)
    vm.param.watch(on_feature_id, "feature_id")
    refresh_map()

    location = pn.state.location
    if location is not None:
        wanted = (location.query_params or {}).get("feature")
        if wanted:
            on_feature_id(type("Event", (), {"new": str(wanted)})())
        location.sync(vm, {"feature_id": "feature"})

    controls = pn.FlexBox(sae_select, mode, query, search_button, browse_button, open_input, align_items="flex-end",
                          sizing_mode="stretch_width")
    card_tab = pn.Column(export, card_pane, sizing_mode="stretch_width")
    try_tab = pn.Column(pn.pane.Markdown("Test the open latent on any text: each token is coloured by its "
                                         "activation (same scale as the card)."),
                        try_box, try_button, try_pane, sizing_mode="stretch_width")
    tabs = pn.Tabs(("Card", card_tab), ("Map", pn.Column(map_note, map_pane, sizing_mode="stretch_width")),
                   ("Try your own text", try_tab),
                   sizing_mode="stretch_width", dynamic=False)
    return pn.Column(intro, controls, error, status, table, tabs, sizing_mode="stretch_width")
