"""`Model`: one Hugging Face model wrapped in nnsight, with one lock.

nnsight 0.8 runs interventions on greenlets, and two threads tracing one model at
once fail, so every engine call on a model takes `model.lock`. nnsight `trace`
blocks live only in `workbench/engine/`; everything else asks the engine for
tensors (`capture`, `forward_with_edits`) and never holds nnsight objects.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from workbench import sites as site_grammar
from workbench.errors import WorkbenchError

# Attribute names nnsight serves on every envoy (`output`, `input`, ...): a submodule
# with such a name is mounted as `E_<name>` (see nnsight Envoy._wrap_envoy).
_OVERLOAD_PREFIX = "E_"


@dataclass
class EditResult:
    """The outcome of `Model.forward_with_edits`.

    logits: [B, T, V] output logits (None when not asked for or the model has no head).
    reads: site -> [B, T, d] values read after the edits were applied (clones).
    """

    logits: torch.Tensor | None
    reads: dict[str, torch.Tensor]


class Model:
    """A transformer ready for the workbench: nnsight wrapper, tokenizer, sites, lock.

    Attributes:
        name: the registry name or repo id it was loaded as.
        arch: site-table family, "llama" | "gpt2" | "bert".
        hf: the transformers model (eval mode).
        nn: the nnsight `TransformersModel` around `hf`.
        tokenizer: its tokenizer.
        is_causal: True for decoder-only language models.
        n_layers, d_model, d_mlp, n_heads, vocab_size, context_size: from the config.
        lock: re-entrant lock every engine call on this model takes.
    """

    def __init__(self, name: str, hf: torch.nn.Module, tokenizer: Any, arch: str, source: str = ""):
        from nnsight.modeling.transformers import TransformersModel

        self.name = name
        self.arch = arch
        self.source = source
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.lock = threading.RLock()
        config = hf.config
        self.is_causal = arch in ("llama", "gpt2")
        self.n_layers = int(getattr(config, "num_hidden_layers", None) or config.n_layer)
        self.d_model = int(getattr(config, "hidden_size", None) or config.n_embd)
        self.n_heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
        self.d_mlp = int(_mlp_width(config, self.d_model))
        self.vocab_size = int(config.vocab_size)
        self.context_size = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1024)
        )
        self._base = _bert_base_prefix(hf) if arch == "bert" else ""
        task = None if self.is_causal else ("fill-mask" if _has_mlm_head(hf) else "feature-extraction")
        self.nn = TransformersModel(hf, tokenizer=tokenizer, task=task)
        # TransformersModel sets the tokenizer's padding side; the engine pads its own
        # batches on the right (see capture.pad_right), so the setting does not matter.

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, arch={self.arch}, layers={self.n_layers}, d_model={self.d_model}, "
            f"device={self.device}, dtype={str(self.dtype).replace('torch.', '')})"
        )

    # ----------------------------------------------------------------- sites
    def sites(self) -> list[str]:
        """Every site this model offers, in forward order."""
        return site_grammar.site_names(self.n_layers)

    def check_site(self, site: str) -> str:
        """Validate a site name for this model; raises UnknownNameError listing the valid ones."""
        return site_grammar.check_site(site, self.n_layers).name

    def site_width(self, site: str) -> int:
        """Width of a site's per-token vector (d_model, or d_mlp for mlp.hook_post).

        Attention patterns are [heads, keys] per query token and have no fixed width:
        this raises for them.
        """
        parsed = site_grammar.check_site(site, self.n_layers)
        if parsed.is_pattern:
            raise WorkbenchError(f"{site} holds [heads, keys] attention probabilities per token, not a vector")
        return self.d_mlp if parsed.kind == "mlp.hook_post" else self.d_model

    def _location(self, site: str) -> site_grammar.SiteLocation:
        parsed = site_grammar.check_site(site, self.n_layers)
        return site_grammar.locate(self.arch, parsed, self._base)

    def _envoy(self, module_path: str):
        """The nnsight envoy of a dotted module path (call only inside a trace)."""
        from nnsight.intervention.envoy import Envoy

        envoy = self.nn
        for part in module_path.split("."):
            if inspect.isdatadescriptor(getattr(Envoy, part, None)):
                part = _OVERLOAD_PREFIX + part
            envoy = getattr(envoy, part)
        return envoy

    def ordered(self, site_list: Sequence[str]) -> list[str]:
        """Sites sorted into the order a forward pass produces them (duplicates removed)."""
        unique = dict.fromkeys(self.check_site(s) for s in site_list)
        return sorted(unique, key=lambda s: site_grammar.parse_site(s).order)

    # ----------------------------------------------------------------- attention
    @contextlib.contextmanager
    def attention_implementation(self, name: str) -> Iterator[None]:
        """Temporarily switch the attention kernel ("eager" exposes probabilities).

        SDPA (the default) returns no attention weights, so reading a pattern site
        needs eager attention; the original implementation is restored afterwards.
        """
        with self.lock:
            current = getattr(self.hf.config, "_attn_implementation", None)
            if current == name:
                yield
                return
            self.hf.set_attn_implementation(name)
            try:
                yield
            finally:
                self.hf.set_attn_implementation(current)

    # ----------------------------------------------------------------- traced reads and edits
    def read_sites(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        site_list: Sequence[str],
        *,
        stop_early: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One traced forward that returns each site's value.

        Args:
            input_ids, attention_mask: [B, T] on any device (moved to the model's).
            site_list: sites to read; values are [B, T, d] ([B, H, T, T] for patterns).
            stop_early: stop the forward after the last requested site (saves the
                remaining layers; logits are not needed here).
        """
        import nnsight

        ordered = self.ordered(site_list)
        need_eager = any(site_grammar.parse_site(s).is_pattern for s in ordered)
        groups = _group_by_location(ordered, self._location)
        inputs = self._inputs(input_ids, attention_mask)
        with self.lock, torch.no_grad(), self.attention_implementation("eager" if need_eager else _current(self.hf)):
            with self.nn.trace(inputs) as tracer:
                saved = nnsight.save({})
                for location, members in groups:
                    value = self._port(location)
                    for site, index in members:
                        saved[site] = value[index] if index is not None else value
                if stop_early:
                    tracer.stop()
        return {site: saved[site] for site in ordered}

    def forward_with_edits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        edits: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        reads: Sequence[str] = (),
        *,
        return_logits: bool = True,
    ) -> EditResult:
        """One traced forward with the activation at some sites replaced.

        Each edit callable receives the site's activation [B, T, d] and returns the
        replacement, which is written in place so the residual stream really carries
        it onward (Llama's mid-block residual is the same tensor as the norm input).
        Reads return clones of the values after the edits.
        """
        import nnsight

        edits = dict(edits or {})
        ordered = self.ordered(list(edits) + list(reads))
        for site in edits:
            if site_grammar.parse_site(site).is_pattern:
                raise WorkbenchError(f"editing attention probabilities ({site}) is not supported; edit a vector site")
        groups = _group_by_location(ordered, self._location)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = self._inputs(input_ids, attention_mask)
        need_eager = any(site_grammar.parse_site(s).is_pattern for s in reads)
        read_set = set(reads)
        with self.lock, torch.no_grad(), self.attention_implementation("eager" if need_eager else _current(self.hf)):
            with self.nn.trace(inputs):
                saved = nnsight.save({})
                for location, members in groups:
                    value = self._port(location)
                    for site, index in members:
                        tensor = value[index] if index is not None else value
                        if site in edits:
                            replacement = edits[site](tensor)
                            if replacement.shape != tensor.shape:
                                raise WorkbenchError(
                                    f"the edit at {site} returned shape {tuple(replacement.shape)}, "
                                    f"expected {tuple(tensor.shape)}"
                                )
                            tensor[...] = replacement.to(tensor.dtype)
                        if site in read_set:
                            saved[site] = tensor.clone()
                if return_logits and self.has_logits:
                    saved["__logits__"] = self.nn.output.logits
        logits = saved.pop("__logits__", None)
        return EditResult(logits=logits, reads=dict(saved))

    @property
    def has_logits(self) -> bool:
        """True when the model has an output head (causal LM or masked LM)."""
        return self.is_causal or _has_mlm_head(self.hf)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Plain logits [B, T, V] of a forward with no edits."""
        result = self.forward_with_edits(input_ids, attention_mask)
        if result.logits is None:
            raise WorkbenchError(f"{self.name} has no output head, so it gives no logits")
        return result.logits

    def final_logits(self, directions: torch.Tensor) -> torch.Tensor:
        """Residual-stream directions [n, d_model] through the final norm and unembedding -> [n, V]."""
        with self.lock, torch.no_grad():
            directions = directions.to(self.device, self.dtype)
            if self.arch == "llama":
                return self.hf.lm_head(self.hf.model.norm(directions))
            if self.arch == "gpt2":
                return self.hf.lm_head(self.hf.transformer.ln_f(directions))
            if _has_mlm_head(self.hf):
                return self.hf.cls.predictions(directions)
        raise WorkbenchError(f"{self.name} has no output head, so directions have no logit effects")

    # ----------------------------------------------------------------- capture (delegated)
    def capture(self, inputs, sites, **kwargs):
        """Read several sites in one forward per batch; see `workbench.engine.capture.capture`."""
        from workbench.engine.capture import capture

        return capture(self, inputs, sites, **kwargs)

    def iter_capture(self, packed, sites, **kwargs):
        """Stream captures batch by batch; see `workbench.engine.capture.iter_capture`."""
        from workbench.engine.capture import iter_capture

        return iter_capture(self, packed, sites, **kwargs)

    # ----------------------------------------------------------------- helpers
    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if input_ids.dim() != 2:
            raise WorkbenchError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.context_size:
            raise WorkbenchError(
                f"{input_ids.shape[1]} tokens exceed the model's context of {self.context_size}; chunk the text"
            )
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }

    def _port(self, location: site_grammar.SiteLocation):
        envoy = self._envoy(location.module)
        return envoy.output if location.port == "output" else envoy.input


def _current(hf: torch.nn.Module) -> str:
    return getattr(hf.config, "_attn_implementation", None) or "eager"


def _group_by_location(ordered: list[str], locate) -> list[tuple[site_grammar.SiteLocation, list]]:
    """Group ordered sites that read the same module port (read each port once)."""
    groups: list[tuple[Any, list]] = []
    for site in ordered:
        loc = locate(site)
        key = (loc.module, loc.port)
        if groups and (groups[-1][0].module, groups[-1][0].port) == key:
            groups[-1][1].append((site, loc.index))
        else:
            groups.append((loc, [(site, loc.index)]))
    return groups


def _mlp_width(config, d_model: int) -> int:
    for field in ("intermediate_size", "n_inner"):
        value = getattr(config, field, None)
        if value:
            return int(value)
    return 4 * d_model


def _has_mlm_head(hf: torch.nn.Module) -> bool:
    return hasattr(hf, "cls") and hasattr(hf.cls, "predictions")


def _bert_base_prefix(hf: torch.nn.Module) -> str:
    """"bert." for BertForMaskedLM-style wrappers, "" for a bare BertModel."""
    for prefix in ("bert.", "roberta.", ""):
        try:
            hf.get_submodule(prefix + "embeddings.word_embeddings")
            return prefix
        except AttributeError:
            continue
    raise WorkbenchError("could not find the encoder's embeddings.word_embeddings module")
