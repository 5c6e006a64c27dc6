"""The app shell: a template with a navigation list, one page at a time, `?page=` in the URL."""

from __future__ import annotations

import importlib

import panel as pn
import param

from workbench.app.context import AppContext, shared_model, user_message
from workbench.app.pages import PAGES


class Router(param.Parameterized):
    """The current page slug, synced with the `?page=` query parameter."""

    page = param.Selector(default=PAGES[0].slug, objects=[p.slug for p in PAGES])


def _notify(message: str) -> None:
    if pn.state.notifications is not None:
        pn.state.notifications.error(message, duration=8000)


def build_app() -> pn.template.BootstrapTemplate:
    """Build one session's app (called per browser session by `panel serve`)."""
    pn.extension(notifications=True)
    import holoviews as hv

    hv.extension("bokeh")
    router = Router()
    if pn.state.location is not None:
        pn.state.location.sync(router, {"page": "page"})
    main = pn.Column(sizing_mode="stretch_width")
    built: dict[str, pn.viewable.Viewable] = {}
    model = shared_model()
    context = AppContext(model=model, notify=_notify)

    nav = pn.widgets.RadioButtonGroup(
        options={p.title: p.slug for p in PAGES}, value=router.page, orientation="vertical",
        button_type="light", sizing_mode="stretch_width",
    )

    def show(slug: str) -> None:
        if slug not in built:
            spec = next(p for p in PAGES if p.slug == slug)
            try:
                built[slug] = importlib.import_module(spec.module).build(context)
            except Exception as error:  # never a stack trace in the page
                built[slug] = pn.pane.Alert(user_message(error), alert_type="danger")
        main.objects = [built[slug]]

    def on_nav(event) -> None:
        router.page = event.new

    def on_route(event) -> None:
        nav.value = event.new
        show(event.new)

    nav.param.watch(on_nav, "value")
    router.param.watch(on_route, "page")
    show(router.page)
    info = pn.pane.Markdown(
        f"**Model** `{model.name}`  \n{model.n_layers} layers x {model.d_model}, {model.arch}, "
        f"{str(model.dtype).replace('torch.', '')} on {model.device}",
        sizing_mode="stretch_width",
    )
    # Bootstrap rather than Fast: the Fast design imports a Google font, and the app
    # serves everything locally (no CDN, works offline).
    template = pn.template.BootstrapTemplate(
        title="Sparse Workbench", sidebar=[pn.pane.Markdown("### Pages"), nav, pn.layout.Divider(), info],
        main=[main], header_background="#2f6f9f", sidebar_width=300,
    )
    return template
