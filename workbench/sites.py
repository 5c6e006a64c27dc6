"""Canonical site names and where they live in each architecture.

Site names follow the TransformerLens grammar that SAELens, Neuronpedia and
circuit-tracer speak:

    hook_embed                          token embeddings            [B, T, d_model]
    blocks.{l}.hook_resid_pre           residual entering block l   [B, T, d_model]
    blocks.{l}.attn.hook_pattern        attention probabilities     [B, H, T, T]
    blocks.{l}.hook_attn_out            attention output            [B, T, d_model]
    blocks.{l}.hook_resid_mid           residual after attention    [B, T, d_model]
    blocks.{l}.mlp.hook_post            MLP hidden after activation [B, T, d_mlp]
    blocks.{l}.hook_mlp_out             MLP output                  [B, T, d_model]
    blocks.{l}.hook_resid_post          residual leaving block l    [B, T, d_model]

One table per architecture family maps each site kind to a module path, whether the
value is that module's input or output, and an index into a tuple output. The
engine resolves these against the nnsight envoy tree; `tests/unit/test_sites.py`
resolves every site on every tiny model.

Post-LN BERT note: `hook_resid_mid` is the attention block's output after its
LayerNorm (the residual the MLP reads), and `hook_resid_post` the block's output
after the second LayerNorm, which is what BERT carries from layer to layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workbench.errors import UnknownNameError, WorkbenchError

# Per-layer site kinds in the order a forward pass produces them. Reads inside one
# nnsight trace must follow this order (nnsight raises OutOfOrderError otherwise).
LAYER_KINDS = (
    "hook_resid_pre",
    "attn.hook_pattern",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
GLOBAL_KINDS = ("hook_embed",)
RESIDUAL_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")

_LAYER_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class SiteLocation:
    """Where a site's value is read in the model.

    module: dotted module path relative to the model root ("model.layers.3.mlp").
    port: "output" or "input" (the module's first positional argument).
    index: element of a tuple value (attention modules return (out, weights)), or None.
    """

    module: str
    port: str
    index: int | None = None


# Templates use {l} for the layer and {base} for the encoder prefix ("bert." in
# BertForMaskedLM, "" in BertModel).
ARCH_TABLES: dict[str, dict[str, tuple[str, str, int | None]]] = {
    "llama": {
        "hook_embed": ("model.embed_tokens", "output", None),
        "hook_resid_pre": ("model.layers.{l}", "input", None),
        "attn.hook_pattern": ("model.layers.{l}.self_attn", "output", 1),
        "hook_attn_out": ("model.layers.{l}.self_attn", "output", 0),
        # Llama adds attention into the residual, then normalises it for the MLP:
        # the norm's input is exactly the mid-block residual.
        "hook_resid_mid": ("model.layers.{l}.post_attention_layernorm", "input", None),
        "mlp.hook_post": ("model.layers.{l}.mlp.down_proj", "input", None),
        "hook_mlp_out": ("model.layers.{l}.mlp", "output", None),
        "hook_resid_post": ("model.layers.{l}", "output", None),
    },
    "gpt2": {
        "hook_embed": ("transformer.wte", "output", None),
        "hook_resid_pre": ("transformer.h.{l}", "input", None),
        "attn.hook_pattern": ("transformer.h.{l}.attn", "output", 1),
        "hook_attn_out": ("transformer.h.{l}.attn", "output", 0),
        "hook_resid_mid": ("transformer.h.{l}.ln_2", "input", None),
        "mlp.hook_post": ("transformer.h.{l}.mlp.c_proj", "input", None),
        "hook_mlp_out": ("transformer.h.{l}.mlp", "output", None),
        "hook_resid_post": ("transformer.h.{l}", "output", None),
    },
    "bert": {
        "hook_embed": ("{base}embeddings.word_embeddings", "output", None),
        "hook_resid_pre": ("{base}encoder.layer.{l}", "input", None),
        "attn.hook_pattern": ("{base}encoder.layer.{l}.attention.self", "output", 1),
        "hook_attn_out": ("{base}encoder.layer.{l}.attention.output.dense", "output", None),
        "hook_resid_mid": ("{base}encoder.layer.{l}.attention.output", "output", None),
        "mlp.hook_post": ("{base}encoder.layer.{l}.intermediate", "output", None),
        "hook_mlp_out": ("{base}encoder.layer.{l}.output.dense", "output", None),
        "hook_resid_post": ("{base}encoder.layer.{l}", "output", None),
    },
}

# Hugging Face `config.model_type` values whose module tree matches a table above.
MODEL_TYPE_TO_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "smollm3": "llama",
    "gpt2": "gpt2",
    "bert": "bert",
}


@dataclass(frozen=True)
class Site:
    """A parsed site name: its layer (None for global sites) and kind."""

    name: str
    layer: int | None
    kind: str

    @property
    def order(self) -> tuple[int, int]:
        """Sort key giving the order in which a forward pass produces the site."""
        if self.layer is None:
            return (-1, 0)
        return (self.layer, LAYER_KINDS.index(self.kind))

    @property
    def is_pattern(self) -> bool:
        return self.kind == "attn.hook_pattern"


def parse_site(name: str) -> Site:
    """Parse a site name without checking it against a model (syntax only)."""
    if name in GLOBAL_KINDS:
        return Site(name, None, name)
    match = _LAYER_SITE.match(name)
    if match and match.group(2) in LAYER_KINDS:
        return Site(name, int(match.group(1)), match.group(2))
    raise WorkbenchError(
        f"{name!r} is not a site name; expected 'hook_embed' or 'blocks.{{layer}}.KIND' with KIND one of "
        f"{', '.join(LAYER_KINDS)} (run `workbench sites MODEL` for the list)"
    )


def site_names(n_layers: int) -> list[str]:
    """All site names of a model with n_layers blocks, in forward order."""
    names = list(GLOBAL_KINDS)
    for layer in range(n_layers):
        names.extend(f"blocks.{layer}.{kind}" for kind in LAYER_KINDS)
    return names


def check_site(name: str, n_layers: int) -> Site:
    """Parse and validate a site for a model with n_layers blocks.

    Raises UnknownNameError listing the valid sites when the name or layer is wrong.
    """
    valid = site_names(n_layers)
    try:
        site = parse_site(name)
    except WorkbenchError:
        raise UnknownNameError("site", name, valid) from None
    if site.layer is not None and not 0 <= site.layer < n_layers:
        raise UnknownNameError("site", name, valid, hint=f"the model has layers 0..{n_layers - 1}")
    return site


def locate(arch: str, site: Site, base: str = "") -> SiteLocation:
    """The module path, port and tuple index of a site in an architecture family."""
    if arch not in ARCH_TABLES:
        raise UnknownNameError("architecture family", arch, sorted(ARCH_TABLES))
    module, port, index = ARCH_TABLES[arch][site.kind]
    module = module.format(l=site.layer, base=base)
    return SiteLocation(module, port, index)


def residual_sites(n_layers: int, kind: str = "hook_resid_post") -> list[str]:
    """One residual-stream site per layer (e.g. for a per-layer norm heat map)."""
    if kind not in LAYER_KINDS:
        raise UnknownNameError("site kind", kind, list(LAYER_KINDS))
    return [f"blocks.{layer}.{kind}" for layer in range(n_layers)]
