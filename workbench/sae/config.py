"""`SaeConfig`: what a sparse dictionary is (architecture, widths, sparsity knobs, where it reads).

One frozen dataclass covers every architecture; the fields an architecture does not use
keep their defaults. The same object is written into `cfg.json` (under
`metadata.workbench`, beside the SAELens v6 fields, see `io.py`) so a folder round-trips
exactly. Cross-field checks run in `__post_init__` and raise `WorkbenchError` with a
message that says what to change.

Architectures (one module each, `workbench/sae/<name>.py`):

    relu               ReLU codes, L1 penalty weighted by decoder norms
    topk               the k largest pre-activations (ReLU'd), AuxK for dead latents
    batchtopk          top k*B over a batch of B while training; a learned threshold after
    jumprelu           z = pre * H(pre - theta), L0 penalty through straight-through estimators
    matryoshka         BatchTopK whose nested prefixes of the dictionary each reconstruct
    abstopk            the k largest |pre|, sign kept (bidirectional features)
    hierarchical_topk  TopK trained across several budgets; the budget is chosen at inference
    mp                 matching pursuit: k residual-guided greedy steps over the decoder atoms

A transcoder is any of these except `mp` with `transcoder=True`: it reads one site
(`site`, width `d_in`) and predicts another (`site_out`, width `d_out`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from workbench.errors import UnknownNameError, WorkbenchError

ARCHITECTURE_NAMES: tuple[str, ...] = (
    "relu",
    "topk",
    "batchtopk",
    "jumprelu",
    "matryoshka",
    "abstopk",
    "hierarchical_topk",
    "mp",
)

# Architectures whose sparsity is set by k (k required, 1 <= k <= d_sae).
K_ARCHITECTURES = frozenset({"topk", "batchtopk", "matryoshka", "abstopk", "hierarchical_topk", "mp"})
# Architectures with dead-latent revival through AuxK.
AUXK_ARCHITECTURES = frozenset({"topk", "batchtopk", "matryoshka", "abstopk", "hierarchical_topk", "mp"})
DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class SaeConfig:
    """The shape, sparsity rule and provenance of one sparse dictionary."""

    architecture: str
    """One of ARCHITECTURE_NAMES (see the module docstring)."""

    d_in: int
    """Width of the input site (d_model for the residual stream)."""

    d_sae: int
    """Number of latents (dictionary atoms)."""

    k: int | None = None
    """Active latents per token: exact for topk/abstopk, the batch mean for batchtopk and
    matryoshka, the largest budget for hierarchical_topk, the number of greedy steps for mp.
    Required (1 <= k <= d_sae) for those; unused by relu and jumprelu."""

    transcoder: bool = False
    """True: predict `site_out` (width `d_out`) from `site` instead of reconstructing `site`."""

    d_out: int | None = None
    """Output width; None means d_in (always d_in for a plain autoencoder)."""

    k_budgets: tuple[int, ...] = ()
    """hierarchical_topk: the budgets trained jointly, increasing, the last equal to k.
    Empty means (k/8, k/4, k/2, k) rounded and de-duplicated."""

    matryoshka_widths: tuple[int, ...] = ()
    """matryoshka: cumulative prefix widths, increasing, the last equal to d_sae.
    Empty means (d_sae/16, d_sae/4, d_sae) rounded."""

    l1_coefficient: float = 5.0
    """relu: weight of sum_i |z_i| * ||W_dec[i]|| in the loss (inputs normalised to E||x||^2 = d_in)."""

    l0_coefficient: float = 1.0
    """jumprelu: weight of the (straight-through) L0 penalty."""

    jumprelu_bandwidth: float = 0.05
    """jumprelu: width of the rectangle kernel of the straight-through estimators."""

    jumprelu_init_threshold: float = 0.01
    """jumprelu: initial per-latent threshold."""

    aux_k: int | None = None
    """AuxK: dead latents used to model the residual (None: d_in // 2, as in Gao et al.)."""

    aux_k_coefficient: float = 1.0 / 32.0
    """AuxK: weight of the auxiliary loss (Gao et al. use 1/32)."""

    threshold_beta: float = 0.999
    """batchtopk / matryoshka: EMA decay of the inference threshold (min selected activation)."""

    mp_residual_threshold: float = 0.0
    """mp: a token stops early once its residual norm falls below this (0: always k steps)."""

    apply_b_dec_to_input: bool | None = None
    """Subtract b_dec from the input before encoding (SAELens' flag). None: True for an
    autoencoder, False for a transcoder (b_dec lives in the output space there)."""

    dtype: str = "float32"
    """Parameter dtype: float32 while training; float16/bfloat16 for shipped files."""

    model_name: str = ""
    """The model the dictionary was trained on (a workbench model name or HF repo id)."""

    site: str = ""
    """Input site, TransformerLens grammar (e.g. 'blocks.15.hook_resid_post')."""

    site_out: str = ""
    """Transcoders: the output site (e.g. 'blocks.6.hook_mlp_out'); '' otherwise."""

    context_size: int | None = None
    """Context length of the training contexts."""

    exclude_position0: bool = True
    """Training skipped position 0 of every context (an attention sink with huge norms in
    many models); evaluations then skip it too."""

    dataset: str = ""
    """Name or path of the training corpus."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURE_NAMES:
            raise UnknownNameError("SAE architecture", self.architecture, ARCHITECTURE_NAMES)
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorkbenchError(f"SaeConfig.{name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise UnknownNameError("dtype", self.dtype, DTYPES)
        self._check_transcoder()
        self._check_k()
        if self.architecture == "hierarchical_topk":
            self._check_budgets()
        if self.architecture == "matryoshka":
            self._check_widths()
        for name in ("l1_coefficient", "l0_coefficient", "aux_k_coefficient", "mp_residual_threshold"):
            if getattr(self, name) < 0:
                raise WorkbenchError(f"SaeConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.jumprelu_bandwidth <= 0:
            raise WorkbenchError(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}")
        if not 0.0 <= self.threshold_beta < 1.0:
            raise WorkbenchError(f"threshold_beta must be in [0, 1), got {self.threshold_beta}")
        if self.aux_k is not None and not 1 <= self.aux_k <= self.d_sae:
            raise WorkbenchError(f"aux_k must be in [1, d_sae={self.d_sae}], got {self.aux_k}")

    # ------------------------------------------------------------------ checks
    def _check_transcoder(self) -> None:
        if self.transcoder:
            if self.architecture == "mp":
                raise WorkbenchError(
                    "matching pursuit selects atoms against the input's own residual, so it "
                    "cannot be a transcoder; pick topk, relu, jumprelu, batchtopk or abstopk"
                )
            if self.d_out is None:
                object.__setattr__(self, "d_out", self.d_in)
            if self.apply_b_dec_to_input:
                raise WorkbenchError(
                    "apply_b_dec_to_input must be False for a transcoder (b_dec has the output "
                    "site's width)"
                )
            object.__setattr__(self, "apply_b_dec_to_input", False)
        else:
            if self.d_out is not None and self.d_out != self.d_in:
                raise WorkbenchError(
                    f"d_out={self.d_out} differs from d_in={self.d_in} but transcoder=False; set "
                    "transcoder=True to predict another site"
                )
            if self.site_out and self.site_out != self.site:
                raise WorkbenchError(
                    f"site_out={self.site_out!r} is set but transcoder=False; set transcoder=True"
                )
            object.__setattr__(self, "d_out", self.d_in)
            if self.apply_b_dec_to_input is None:
                object.__setattr__(self, "apply_b_dec_to_input", True)
        if not isinstance(self.d_out, int) or self.d_out < 1:
            raise WorkbenchError(f"d_out must be a positive integer, got {self.d_out!r}")

    def _check_k(self) -> None:
        if self.architecture in K_ARCHITECTURES:
            if self.k is None:
                raise WorkbenchError(
                    f"architecture {self.architecture!r} needs k (active latents per token); "
                    "pass --k / k=..."
                )
            if not isinstance(self.k, int) or isinstance(self.k, bool) or not 1 <= self.k <= self.d_sae:
                raise WorkbenchError(
                    f"k must be an integer with 1 <= k <= d_sae={self.d_sae}, got {self.k!r}"
                )
            if self.architecture == "mp" and self.k > self.d_in:
                raise WorkbenchError(
                    f"mp takes k greedy steps, each removing one direction of the residual; "
                    f"k={self.k} > d_in={self.d_in} steps add nothing; use k <= d_in"
                )

    def _check_budgets(self) -> None:
        budgets = tuple(self.k_budgets) or tuple(
            sorted({max(1, self.k // 8), max(1, self.k // 4), max(1, self.k // 2), self.k})
        )
        budgets = tuple(int(b) for b in budgets)
        if list(budgets) != sorted(set(budgets)) or budgets[0] < 1:
            raise WorkbenchError(f"k_budgets must be strictly increasing positive integers, got {budgets}")
        if budgets[-1] != self.k:
            raise WorkbenchError(f"the last of k_budgets {budgets} must equal k={self.k}")
        object.__setattr__(self, "k_budgets", budgets)

    def _check_widths(self) -> None:
        widths = tuple(self.matryoshka_widths) or tuple(
            sorted({max(1, self.d_sae // 16), max(1, self.d_sae // 4), self.d_sae})
        )
        widths = tuple(int(w) for w in widths)
        if list(widths) != sorted(set(widths)) or widths[0] < 1:
            raise WorkbenchError(
                f"matryoshka_widths must be strictly increasing positive integers, got {widths}"
            )
        if widths[-1] != self.d_sae:
            raise WorkbenchError(f"the last of matryoshka_widths {widths} must equal d_sae={self.d_sae}")
        object.__setattr__(self, "matryoshka_widths", widths)

    # ------------------------------------------------------------------ helpers
    @property
    def resolved_aux_k(self) -> int:
        """k_aux for AuxK: the configured value or d_in // 2, never above d_sae."""
        return min(self.aux_k or max(1, self.d_in // 2), self.d_sae)

    @property
    def output_site(self) -> str:
        """The site the dictionary's output replaces (site_out for transcoders)."""
        return self.site_out if self.transcoder and self.site_out else self.site

    def replace(self, **changes: Any) -> "SaeConfig":
        """A copy with some fields changed (re-checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def required_field_names(cls) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "SaeConfig":
        """Build from a dict, failing on unknown or missing keys (names the source)."""
        known = set(cls.field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise WorkbenchError(
                f"{source}: unknown SAE config keys {unknown}; expected only {sorted(known)}. "
                "Was the file written by another tool or a newer workbench?"
            )
        missing = [name for name in cls.required_field_names() if name not in data]
        if missing:
            raise WorkbenchError(f"{source}: missing SAE config keys {missing}")
        values = dict(data)
        for key in ("k_budgets", "matryoshka_widths"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)
