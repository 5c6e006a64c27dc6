"""ipywidgets shell over `SteeringViewModel` for notebooks.

    from workbench.widgets.steering import SteeringWidget
    w = SteeringWidget(model, features=[190])      # or SteeringWidget(view_model)
    w                                              # shows the controls and the output

Generation runs on a button click (never while a slider moves). Headless (nbval, CI) the
same actions run from code: set `w.sliders[190].value = 2.0`, then call `w.on_generate()`
and read `w.vm.summary` / `w.vm.steered_text`.
"""

from __future__ import annotations

import ipywidgets as widgets

from workbench.viewmodels.steering import SLIDER_RANGE, SteeringViewModel


class SteeringWidget:
    """Prompt box, SAE chooser, feature sliders, positions mode, Generate / Sweep buttons, output."""

    def __init__(self, model_or_vm, features=(), **params):
        self.vm = model_or_vm if isinstance(model_or_vm, SteeringViewModel) else SteeringViewModel(model_or_vm, **params)
        vm = self.vm
        self.prompt = widgets.Textarea(value=vm.prompt, description="Prompt", layout=widgets.Layout(width="100%"))
        self.sae = widgets.Dropdown(options=list(vm.param.sae_name.objects), value=vm.sae_name, description="SAE")
        self.units = widgets.ToggleButtons(options=[("x typical norm", "norm"), ("raw", "raw")], value=vm.units,
                                           description="Units")
        self.positions = widgets.Dropdown(options=[("all positions, every step", "all"),
                                                   ("from a position onward", "from"),
                                                   ("generated tokens only", "generated")],
                                          value=vm.positions_mode, description="Positions")
        self.from_position = widgets.IntText(value=vm.from_position, description="From")
        self.max_new_tokens = widgets.IntSlider(value=vm.max_new_tokens, min=1, max=128, description="New tokens",
                                                continuous_update=False)
        self.feature_index = widgets.IntText(value=0, description="Feature")
        self.add_button = widgets.Button(description="Add feature")
        self.generate_button = widgets.Button(description="Generate", button_style="primary")
        self.sweep_coefs = widgets.Text(value=vm.sweep_coefs, description="Sweep coefs")
        self.sweep_button = widgets.Button(description="Run sweep")
        self.feature_box = widgets.VBox()
        self.message = widgets.HTML()
        self.output = widgets.HTML()
        self.plot = widgets.Output()
        self.sliders: dict[int, widgets.FloatSlider] = {}
        self.add_button.on_click(lambda _b: self.on_add())
        self.generate_button.on_click(lambda _b: self.on_generate())
        self.sweep_button.on_click(lambda _b: self.on_sweep())
        self.sae.observe(self._on_sae, names="value")
        self.units.observe(self._on_units, names="value")
        for index in features:
            self.vm.add_feature(index)
        self._render_features()
        self.widget = widgets.VBox([
            self.prompt, widgets.HBox([self.sae, self.units]), widgets.HBox([self.positions, self.from_position]),
            self.max_new_tokens, widgets.HBox([self.feature_index, self.add_button]), self.feature_box,
            widgets.HBox([self.generate_button, self.sweep_coefs, self.sweep_button]), self.message, self.output,
            self.plot,
        ])

    # ------------------------------------------------------------------ rendering
    def _render_features(self) -> None:
        low, high = SLIDER_RANGE[self.vm.units]
        rows, self.sliders = [], {}
        for feature in self.vm.features:
            slider = widgets.FloatSlider(value=feature["coef"], min=low, max=high,
                                         step=0.05 if self.vm.units == "norm" else 1.0,
                                         description=f"#{feature['index']}", continuous_update=False)
            slider.observe(lambda change, i=feature["index"]: self.vm.set_coef(i, change["new"]), names="value")
            remove = widgets.Button(description="Remove", layout=widgets.Layout(width="80px"))
            remove.on_click(lambda _b, i=feature["index"]: self.on_remove(i))
            self.sliders[feature["index"]] = slider
            rows.append(widgets.HBox([slider, widgets.Label(feature["label"]), remove]))
        self.feature_box.children = rows

    def _show_error(self) -> None:
        self.message.value = f"<span style='color:#b91c1c'>{self.vm.error}</span>" if self.vm.error else ""

    def _sync(self) -> None:
        vm = self.vm
        vm.prompt, vm.positions_mode, vm.from_position = self.prompt.value, self.positions.value, self.from_position.value
        vm.max_new_tokens, vm.sweep_coefs = self.max_new_tokens.value, self.sweep_coefs.value

    # ------------------------------------------------------------------ handlers
    def _on_sae(self, change) -> None:
        self.vm.sae_name = change["new"]
        self._render_features()

    def _on_units(self, change) -> None:
        self.vm.units = change["new"]
        self._render_features()

    def on_add(self, index: int | None = None) -> bool:
        ok = self.vm.add_feature(self.feature_index.value if index is None else index)
        self._show_error()
        self._render_features()
        return ok

    def on_remove(self, index: int) -> None:
        self.vm.remove_feature(index)
        self._render_features()

    def on_generate(self) -> bool:
        """Generate baseline and steered continuations with the current settings."""
        self._sync()
        ok = self.vm.generate()
        self._show_error()
        if ok:
            self.output.value = self.vm.compare_html + f"<div>{self.vm.summary}</div>"
        return ok

    def on_sweep(self) -> bool:
        """Run the dose-response sweep and draw it."""
        self._sync()
        ok = self.vm.sweep()
        self._show_error()
        if ok:
            from IPython.display import display

            from workbench.viz.steering import dose_response_plot

            self.plot.clear_output()
            with self.plot:
                display(dose_response_plot(self.vm.sweep_rows, units=self.vm.units))
        return ok

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
