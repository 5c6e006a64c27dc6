"""Interventions: what to change in the residual stream while the model runs.

    AddFeature(sae, feature, coef, units)     add an SAE feature's decoder direction
    AddVector(site, vector, coef, units)      add any vector (file, difference-in-means, random)
    ClampFeature(sae, feature, value)         set a feature's activation: encode, edit, decode,
                                              keep the SAE error term
    AblateFeatures(sae, features)             clamp features to zero

Each intervention acts at one site and turns the vectors it edits, x [n, d], into an
additive change [n, d]. All changes at a site are computed from the incoming activation
and summed, so interventions combine without an order. Clamping is computed as
`x + (new_code - code) * W_dec[f]`, which equals `decode(edited codes) + (x - x_hat)` but
is exactly x when the code does not change (clamping to the current value is a no-op to
the last bit, which a test checks).

Units of a coefficient: "norm" (default) scales the unit direction by the site's typical
token norm (`vectors.typical_norm`), so coefficients mean the same on every layer; "raw"
adds coef x the vector as given (for a feature: as if its activation rose by coef).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from workbench.errors import WorkbenchError

UNITS = ("norm", "raw")
# Stated ranges: |coef| above these is rejected (beyond them text is noise anyway).
MAX_COEF = {"norm": 20.0, "raw": 1000.0}
MAX_CLAMP_VALUE = 1000.0


def _check_units(units: str) -> None:
    if units not in UNITS:
        raise WorkbenchError(f"units must be 'norm' (typical residual norms) or 'raw', got {units!r}")


def check_coef(coef: float, units: str) -> float:
    """A finite coefficient inside the stated range for its units, or a clear error."""
    _check_units(units)
    try:
        value = float(coef)
    except (TypeError, ValueError):
        raise WorkbenchError(f"the coefficient must be a number, got {coef!r}") from None
    limit = MAX_COEF[units]
    if not abs(value) <= limit:  # also rejects NaN
        raise WorkbenchError(f"coefficient {coef} is outside the range [-{limit:g}, {limit:g}] for {units} units")
    return value


def check_feature(sae, feature: Any) -> int:
    """A valid feature index of `sae`, or an error naming the valid range."""
    d_sae = int(sae.cfg.d_sae)
    if isinstance(feature, (bool, float)) or not hasattr(feature, "__index__"):
        raise WorkbenchError(f"a feature index must be an integer, got {feature!r}")
    index = operator.index(feature)
    if not 0 <= index < d_sae:
        raise WorkbenchError(f"feature {index} does not exist: this SAE has {d_sae} features (0..{d_sae - 1})")
    return index


def _check_sae(sae) -> None:
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not hasattr(sae, "W_dec"):
        raise WorkbenchError(f"expected a workbench SparseAutoencoder, got {type(sae).__name__}")
    if not cfg.site:
        raise WorkbenchError("the SAE does not record which site it reads; load it with site=...")


class Intervention:
    """Base: one edit at one site. Subclasses define `site`, `check`, `delta`, `describe`."""

    site: str

    def check(self, model) -> None:
        """Raise WorkbenchError if this intervention does not fit `model`."""
        model.check_site(self.site)

    def delta(self, x: torch.Tensor, norm: float | None) -> torch.Tensor:
        """Additive change [n, d] (float32) for the vectors x [n, d]; norm = the site's typical norm."""
        raise WorkbenchError(f"{type(self).__name__} defines no delta")

    @property
    def needs_norm(self) -> bool:
        return getattr(self, "units", "raw") == "norm"

    def describe(self) -> str:
        return type(self).__name__


def _direction_delta(x: torch.Tensor, direction: torch.Tensor, coef: float, units: str,
                     norm: float | None) -> torch.Tensor:
    direction = direction.to(x.device, torch.float32)
    if units == "norm":
        if norm is None:
            raise WorkbenchError("norm units need the site's typical norm")
        direction = direction / direction.norm().clamp_min(1e-12) * float(norm)
    return (coef * direction).expand(x.shape[0], -1)


@dataclass(frozen=True, eq=False)
class AddFeature(Intervention):
    """Add `coef` x an SAE feature's decoder direction at the SAE's (output) site."""

    sae: Any
    """A workbench SparseAutoencoder (its cfg.site says where it writes)."""

    feature: int
    """Feature index, 0 <= feature < d_sae."""

    coef: float
    """Strength; in typical residual norms ("norm") or feature-activation units ("raw")."""

    units: str = "norm"
    """"norm" or "raw" (see the module docstring)."""

    label: str = ""
    """Shown in results and plots (default: "feature F")."""

    def __post_init__(self) -> None:
        _check_sae(self.sae)
        object.__setattr__(self, "feature", check_feature(self.sae, self.feature))
        object.__setattr__(self, "coef", check_coef(self.coef, self.units))

    @property
    def site(self) -> str:  # a transcoder writes its decoder rows into its output site
        return self.sae.cfg.output_site

    def check(self, model) -> None:
        super().check(model)
        width = model.site_width(self.site)
        if width != self.sae.W_dec.shape[1]:
            raise WorkbenchError(f"the SAE writes width {self.sae.W_dec.shape[1]} but {self.site} of {model.name} "
                                 f"has width {width}; pick the SAE trained for this model")

    def direction(self) -> torch.Tensor:
        """The decoder row [d] (float32, CPU)."""
        return self.sae.W_dec[self.feature].detach().float().cpu()

    def delta(self, x: torch.Tensor, norm: float | None) -> torch.Tensor:
        return _direction_delta(x, self.sae.W_dec[self.feature].detach(), self.coef, self.units, norm)

    def describe(self) -> str:
        return self.label or f"feature {self.feature} x {self.coef:g} ({self.units})"


@dataclass(frozen=True, eq=False)
class AddVector(Intervention):
    """Add `coef` x a vector at a site."""

    site: str
    """Site name, e.g. "blocks.15.hook_resid_post"."""

    vector: torch.Tensor
    """[d] direction (any norm); width must equal the site's width."""

    coef: float = 1.0
    """Strength; "norm" units scale the unit vector by the site's typical norm, "raw" adds coef x vector."""

    units: str = "norm"
    """"norm" or "raw"."""

    label: str = "vector"
    """Shown in results and plots."""

    def __post_init__(self) -> None:
        from workbench.steering.vectors import check_vector

        vector = torch.as_tensor(self.vector)
        object.__setattr__(self, "vector", check_vector(vector, int(vector.shape[-1]) if vector.dim() else 0))
        object.__setattr__(self, "coef", check_coef(self.coef, self.units))

    def check(self, model) -> None:
        super().check(model)
        width = model.site_width(self.site)
        if self.vector.shape[0] != width:
            raise WorkbenchError(f"the vector {self.label!r} has width {self.vector.shape[0]} but {self.site} of "
                                 f"{model.name} has width {width}; use a vector computed for this model and site")

    def delta(self, x: torch.Tensor, norm: float | None) -> torch.Tensor:
        return _direction_delta(x, self.vector, self.coef, self.units, norm)

    def describe(self) -> str:
        return f"{self.label} x {self.coef:g} ({self.units})"


@dataclass(frozen=True, eq=False)
class ClampFeature(Intervention):
    """Set features' activations to fixed values, keeping the SAE's error term."""

    sae: Any
    """A workbench SparseAutoencoder (not a transcoder: the code must come from the edited site)."""

    features: tuple[int, ...]
    """Feature indices (an int is accepted for one feature)."""

    values: tuple[float, ...]
    """One activation value per feature (a number is broadcast), |value| <= MAX_CLAMP_VALUE."""

    label: str = ""
    """Shown in results."""

    def __post_init__(self) -> None:
        _check_sae(self.sae)
        if self.sae.cfg.transcoder:
            raise WorkbenchError("clamping needs an autoencoder that reads and writes one site, not a transcoder")
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        if not features:
            raise WorkbenchError("name at least one feature to clamp")
        features = tuple(check_feature(self.sae, f) for f in features)
        values = self.values
        values = (values,) * len(features) if isinstance(values, (int, float)) else tuple(values)
        if len(values) != len(features):
            raise WorkbenchError(f"{len(features)} features but {len(values)} clamp values")
        for value in values:
            if not abs(float(value)) <= MAX_CLAMP_VALUE:
                raise WorkbenchError(f"clamp value {value} is outside [-{MAX_CLAMP_VALUE:g}, {MAX_CLAMP_VALUE:g}]")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "values", tuple(float(v) for v in values))

    @property
    def site(self) -> str:
        return self.sae.cfg.site

    @property
    def needs_norm(self) -> bool:
        return False

    def check(self, model) -> None:
        super().check(model)
        width = model.site_width(self.site)
        if width != self.sae.cfg.d_in:
            raise WorkbenchError(f"the SAE reads width {self.sae.cfg.d_in} but {self.site} of {model.name} "
                                 f"has width {width}")

    def delta(self, x: torch.Tensor, norm: float | None) -> torch.Tensor:
        sae = self.sae
        index = torch.tensor(self.features, device=sae.W_dec.device)
        with torch.no_grad():
            codes = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype))[:, index].float()  # [n, f]
            target = torch.tensor(self.values, device=codes.device).expand_as(codes)
            change = target - codes  # exactly zero where the code already has the value
            delta = change @ sae.W_dec[index].float()
        return delta.to(x.device)

    def describe(self) -> str:
        if self.label:
            return self.label
        pairs = ", ".join(f"{f}={v:g}" for f, v in zip(self.features, self.values))
        return f"clamp {pairs}"


def AblateFeatures(sae, features: Sequence[int] | int, label: str = "") -> ClampFeature:
    """Zero-ablate features (clamp them to 0, keeping the SAE error term)."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return ClampFeature(sae, features, 0.0, label=label or f"ablate {', '.join(map(str, features))}")


@dataclass
class Arm:
    """One condition of an experiment: a label and the interventions it applies (none = baseline)."""

    label: str
    interventions: list = field(default_factory=list)


def check_interventions(model, interventions: Sequence[Intervention]) -> None:
    """Validate every intervention against the model (sites exist, widths match)."""
    for item in interventions:
        if not isinstance(item, Intervention):
            raise WorkbenchError(f"expected interventions (AddFeature, AddVector, ClampFeature, ...), "
                                 f"got {type(item).__name__}")
        item.check(model)


def compile_arms(model, arms: Sequence[Arm], rows_per_arm: int, *, first_arm: int = 0) -> dict:
    """Per-site edit callables for a batch whose rows are arm-major: row r is arm r // rows_per_arm.

    `first_arm` offsets the arm index when the batch holds a slice of the arms. Returns
    {site: fn(x [n, d], EditSlice) -> [n, d]} for `engine.generate.generate_with_edits`.
    """
    from workbench.steering.vectors import typical_norm

    by_site: dict[str, dict[int, list[Intervention]]] = {}
    for offset, arm in enumerate(arms):
        check_interventions(model, arm.interventions)
        for item in arm.interventions:
            by_site.setdefault(item.site, {}).setdefault(first_arm + offset, []).append(item)
    norms = {site: typical_norm(model, site) for site, per_arm in by_site.items()
             if any(i.needs_norm for items in per_arm.values() for i in items)}
    return {site: _site_edit(per_arm, rows_per_arm, first_arm, norms.get(site)) for site, per_arm in by_site.items()}


def _site_edit(per_arm: dict[int, list[Intervention]], rows_per_arm: int, first_arm: int, norm: float | None):
    def edit(x: torch.Tensor, where) -> torch.Tensor:
        arm_of_row = where.rows // rows_per_arm + first_arm
        out = x.float().clone()
        for arm, items in per_arm.items():
            selected = arm_of_row == arm
            if not bool(selected.any()):
                continue
            x_arm = x[selected]
            total = torch.zeros_like(out[selected])
            for item in items:
                total += item.delta(x_arm, norm)
            out[selected] = out[selected] + total
        return out

    return edit
