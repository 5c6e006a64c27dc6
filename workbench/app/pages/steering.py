"""Steering page: a prompt, features with a coefficient slider each, the positions mode,
baseline and steered continuations side by side (changed tokens marked), and a
dose-response sweep plot.

`?page=steering&feature=MODEL/SITE/SAE/INDEX` opens the page with that feature chosen
(the Features page's "steer with this" link). Generation and sweeps run off the UI thread
with a progress bar; the engine's model lock serialises requests from all sessions.
"""

from __future__ import annotations

import asyncio

import panel as pn

from workbench.app.context import AppContext, on_load_task, run_off_ui_thread, user_message
from workbench.viewmodels.steering import MAX_PROMPT_CHARS, SLIDER_RANGE, SteeringViewModel

POSITION_LABELS = {
    "all positions, every step (prompt + generated)": "all",
    "from a position onward": "from",
    "generated tokens only": "generated",
}


def _url_feature() -> str:
    """The `?feature=` of this session's URL ('' without one)."""
    location = pn.state.location
    return (location.query_params.get("feature") if location is not None else None) or ""


def _sae_name_of(feature_id: str) -> str | None:
    from workbench.catalog import parse_feature_id
    from workbench.errors import WorkbenchError

    try:
        return parse_feature_id(feature_id)[2]
    except WorkbenchError:
        return None  # reported by the open in on_load


def build(context: AppContext) -> pn.viewable.Viewable:
    vm = SteeringViewModel(context.model)
    url_feature = _url_feature()
    url_sae = _sae_name_of(url_feature)
    if url_sae in vm.param.sae_name.objects:
        # The page reaches the browser already on the URL's SAE; the feature itself is added
        # once the page has loaded (open_url_feature below), which takes seconds.
        vm.sae_name = url_sae
    prompt = pn.widgets.TextAreaInput(name="Prompt", value=vm.prompt, max_length=MAX_PROMPT_CHARS, height=70,
                                      sizing_mode="stretch_width")
    sae = pn.widgets.Select(name="SAE", options=list(vm.param.sae_name.objects), value=vm.sae_name, width=220)
    units = pn.widgets.RadioButtonGroup(name="Units", options={"x typical norm": "norm", "raw": "raw"},
                                        value=vm.units, button_type="light")
    positions = pn.widgets.Select(name="Positions", options=POSITION_LABELS, value=vm.positions_mode, width=300)
    from_position = pn.widgets.IntInput(name="From position (negative: from the prompt's end)",
                                        value=vm.from_position, width=300, visible=False)
    max_new = pn.widgets.IntSlider(name="New tokens", start=1, end=128, value=vm.max_new_tokens, width=220)
    seed = pn.widgets.IntInput(name="Seed", value=vm.seed, start=0, width=100)
    sample = pn.widgets.Checkbox(name="sample (else greedy)", value=vm.do_sample)
    query = pn.widgets.TextInput(name="Find features", placeholder="an index (e.g. 190) or a word (e.g. water)",
                                 width=300)
    search = pn.widgets.Button(name="Search", width=90)
    results = pn.widgets.Select(name="Results", options={}, width=420, visible=False)
    add = pn.widgets.Button(name="Steer with this", button_type="success", width=140, visible=False)
    chosen = pn.Column(sizing_mode="stretch_width")
    generate = pn.widgets.Button(name="Generate", button_type="primary", width=120)
    progress = pn.indicators.Progress(value=0, max=100, width=260, visible=False, bar_color="primary")
    status = pn.pane.Markdown("", css_classes=["wb-steer-status"])
    error = pn.pane.Alert("", alert_type="danger", visible=False)
    compare = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["wb-steer-compare"])
    coefs = pn.widgets.TextInput(name="Sweep coefficients", value=vm.sweep_coefs, width=260)
    words = pn.widgets.TextInput(name="Concept words (optional)", placeholder="default: each feature's top tokens",
                                 width=300)
    sweep = pn.widgets.Button(name="Run sweep", width=120)
    sweep_status = pn.pane.Markdown("")
    # Visibility is toggled on the row, never on the HoloViews panes: Panel 1.9.4 fails to sync
    # a HoloViews pane's layout params (its Bokeh stylesheets) once it shows a plot.
    plot_coef = pn.pane.HoloViews(None, min_height=340)
    plot_fluency = pn.pane.HoloViews(None, min_height=340)
    plots = pn.Row(plot_coef, plot_fluency, visible=False)
    actions = [generate, sweep, search, add]

    def show_error(message: str) -> None:
        error.object, error.visible = message, bool(message)

    def render_features(*_) -> None:
        low, high = SLIDER_RANGE[vm.units]
        rows = []
        for feature in vm.features:
            slider = pn.widgets.FloatSlider(name=f"coefficient of feature {feature['index']}", start=low, end=high,
                                            step=0.05 if vm.units == "norm" else 1.0, value=feature["coef"],
                                            width=320)
            remove = pn.widgets.Button(name="Remove", width=80, button_type="light")
            slider.param.watch(lambda event, i=feature["index"]: vm.set_coef(i, event.new), "value")
            remove.on_click(lambda _event, i=feature["index"]: (vm.remove_feature(i), render_features()))
            rows.append(pn.Row(pn.pane.Markdown(feature["label"], width=300), slider, remove))
        chosen.objects = rows or [pn.pane.Markdown("*No feature chosen yet: search for one above.*")]

    async def run(action, label: str) -> bool:
        """Run a view-model action in a worker thread, showing progress; True on success."""
        for button in actions:
            button.disabled = True
        progress.value, progress.visible = 0, True
        status.object = f"{label} ..."
        show_error("")
        task = asyncio.ensure_future(run_off_ui_thread(action))
        try:
            while not task.done():
                progress.value = vm.progress
                await asyncio.sleep(0.2)
            ok = task.result()
        except Exception as exc:  # never a stack trace in the page
            vm.error, ok = user_message(exc), False
        finally:
            for button in actions:
                button.disabled = False
            progress.visible = False
        show_error(vm.error)
        status.object = ""
        return bool(ok)

    def sync_inputs() -> None:
        vm.prompt = prompt.value_input or prompt.value
        vm.positions_mode, vm.from_position = positions.value, int(from_position.value or 0)
        vm.max_new_tokens, vm.seed, vm.do_sample = max_new.value, int(seed.value or 0), sample.value

    async def on_generate(_event=None) -> None:
        sync_inputs()
        if await run(vm.generate, "Generating"):
            compare.object = vm.compare_html
            status.object = vm.summary

    async def on_search(_event=None) -> None:
        vm.query = query.value_input or query.value
        if await run(vm.search, "Searching"):
            results.options = {label: index for index, label in vm.search_results}
            results.value = vm.search_results[0][0]
            results.visible = add.visible = True

    async def on_add(_event=None) -> None:
        if results.value is not None:
            await run(lambda: vm.add_feature(results.value), "Adding")
            render_features()

    async def on_sweep(_event=None) -> None:
        sync_inputs()
        vm.sweep_coefs, vm.sweep_words = coefs.value, words.value
        if await run(vm.sweep, "Sweeping"):
            from workbench.viz.steering import dose_response_panels

            try:
                left, right = dose_response_panels(vm.sweep_rows, units=vm.units)
            except Exception as exc:  # never a stack trace in the page
                show_error(user_message(exc))
                return
            plot_coef.object, plot_fluency.object = left, right
            plots.visible = True
            sweep_status.object = vm.sweep_summary

    def on_sae(event) -> None:
        vm.sae_name = event.new  # clears the chosen features
        results.visible = add.visible = False
        render_features()

    def on_units(event) -> None:
        vm.units = event.new  # resets the coefficients to the new unit's default
        render_features()

    def on_positions(event) -> None:
        from_position.visible = event.new == "from"

    generate.on_click(on_generate)
    search.on_click(on_search)
    add.on_click(on_add)
    sweep.on_click(on_sweep)
    sae.param.watch(on_sae, "value")
    units.param.watch(on_units, "value")
    positions.param.watch(on_positions, "value")
    # The feature rows are re-rendered explicitly on the UI thread (never from a watcher:
    # view-model changes made in worker threads must not touch the page).
    render_features()

    async def open_url_feature() -> None:
        if await run(lambda: vm.open_feature_id(url_feature), "Opening feature"):
            sae.value = vm.sae_name
            render_features()

    if url_feature:
        on_load_task(open_url_feature)
    if not vm.param.sae_name.objects:
        show_error(f"No SAE is registered for {context.model.name}: add one under data/saes/{context.model.name}/ "
                   "or $WORKBENCH_SAE_DIRS to steer with features.")
    intro = pn.pane.Markdown(
        f"### Steering\nAdd SAE features' decoder directions to the residual stream of **{context.model.name}** "
        "while it generates, and compare with the unsteered continuation from the same seed. Coefficients are in "
        "units of the site's typical token norm (or raw). Pick features with a high *output score*: they steer best."
    )
    settings = pn.FlexBox(sae, units, positions, from_position, max_new, seed, sample, sizing_mode="stretch_width")
    finder = pn.FlexBox(query, search, results, add, sizing_mode="stretch_width")
    sweeper = pn.Column(pn.pane.Markdown("#### Dose-response sweep\nConcept score (probability on the feature's "
                                         "top tokens) against fluency (perplexity under the unsteered model), "
                                         "with a random direction of equal norm as the control."),
                        pn.Row(coefs, words, sweep), sweep_status, plots,
                        sizing_mode="stretch_width")
    return pn.Column(intro, prompt, settings, finder, chosen, pn.Row(generate, progress, status), error, compare,
                     pn.layout.Divider(), sweeper, sizing_mode="stretch_width")
