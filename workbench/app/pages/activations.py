"""Activations page: type a text, see per-token, per-layer activation norms as a heat map."""

from __future__ import annotations

import panel as pn

from workbench.app.context import AppContext, on_load_task, run_off_ui_thread, user_message
from workbench.viewmodels.activations import MAX_PROMPT_CHARS, SITE_KINDS, ResidualNormsViewModel
from workbench.viz.heatmap import layer_token_heatmap


def build(context: AppContext) -> pn.viewable.Viewable:
    vm = ResidualNormsViewModel(context.model)
    text = pn.widgets.TextAreaInput(name="Text", value=vm.text, max_length=MAX_PROMPT_CHARS, height=90,
                                    sizing_mode="stretch_width", placeholder="Type a text and press Run")
    site = pn.widgets.Select(name="Site", options=SITE_KINDS, value=vm.site_kind, width=380)
    run = pn.widgets.Button(name="Run", button_type="primary", width=100)
    summary = pn.pane.Markdown("", css_classes=["wb-summary"])
    error = pn.pane.Alert("", alert_type="danger", visible=False)
    plot = pn.pane.HoloViews(None, sizing_mode="stretch_width", min_height=420)

    async def refresh(*_):
        vm.text, vm.site_kind = text.value_input or text.value, site.value
        plot.loading = True
        try:
            await run_off_ui_thread(vm.compute)
        except Exception as exc:  # the page never shows a stack trace
            vm.error = user_message(exc)
        finally:
            plot.loading = False
        error.object, error.visible = vm.error, bool(vm.error)
        if not vm.error:
            plot.object = layer_token_heatmap(vm.norms, vm.tokens, title=f"L2 norm of {vm.site_kind}")
            summary.object = vm.summary

    run.on_click(refresh)
    text.param.watch(refresh, "value")
    site.param.watch(refresh, "value")
    on_load_task(refresh)
    intro = pn.pane.Markdown(
        f"### Activation norms\nPer-token, per-layer L2 norms of a site of **{context.model.name}**. "
        "Large norms mark attention sinks and outlier tokens (they dominate plain reconstruction metrics)."
    )
    return pn.Column(intro, text, pn.Row(site, run), error, summary, plot, sizing_mode="stretch_width")
