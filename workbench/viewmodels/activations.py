"""View-model of the Activations page: per-token, per-layer norms of a residual site."""

from __future__ import annotations

import numpy as np
import param
import torch

from workbench.errors import WorkbenchError

MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 512
SITE_KINDS = {
    "residual stream after each block (hook_resid_post)": "hook_resid_post",
    "residual stream before each block (hook_resid_pre)": "hook_resid_pre",
    "residual stream mid-block (hook_resid_mid)": "hook_resid_mid",
    "attention output (hook_attn_out)": "hook_attn_out",
    "MLP output (hook_mlp_out)": "hook_mlp_out",
}


class ResidualNormsViewModel(param.Parameterized):
    """Text in, an [n_layers, n_tokens] matrix of activation norms out.

    Call `compute()` (the page runs it off the UI thread) after changing `text` or
    `site_kind`; it fills `norms`, `tokens` and `summary`, or `error` on bad input.
    """

    text = param.String(default="The quick brown fox jumps over the lazy dog.", doc="text to run")
    site_kind = param.Selector(default="hook_resid_post", objects=list(SITE_KINDS.values()),
                               doc="which per-layer site to measure")
    norms = param.Array(default=None, doc="[n_layers, n_tokens] L2 norms")
    tokens = param.List(default=[], doc="the tokens of the text")
    summary = param.String(default="", doc="one line describing the result")
    error = param.String(default="", doc="message for the user when the input was bad")
    busy = param.Boolean(default=False, doc="True while computing")

    def __init__(self, model, **params):
        super().__init__(**params)
        self.model = model

    def compute(self) -> None:
        """Capture the chosen site at every layer and store the per-token norms."""
        self.busy = True
        try:
            norms, tokens = self._norms(self.text, self.site_kind)
        except WorkbenchError as error:
            self.error = str(error)
            return
        finally:
            self.busy = False
        self.error = ""
        self.tokens = tokens
        self.norms = norms
        layer, position = np.unravel_index(int(np.argmax(norms)), norms.shape)
        self.summary = (f"{len(tokens)} tokens x {norms.shape[0]} layers of {self.site_kind}; largest norm "
                        f"{norms.max():.1f} at layer {layer}, token {position} {tokens[position]!r}")

    def _norms(self, text: str, kind: str) -> tuple[np.ndarray, list[str]]:
        text = text.strip()
        if not text:
            raise WorkbenchError("type some text first")
        if len(text) > MAX_PROMPT_CHARS:
            raise WorkbenchError(f"the text has {len(text)} characters; the cap is {MAX_PROMPT_CHARS}")
        ids = self.model.tokenizer(text)["input_ids"]
        if len(ids) > MAX_PROMPT_TOKENS:
            raise WorkbenchError(f"the text has {len(ids)} tokens; the cap is {MAX_PROMPT_TOKENS}")
        sites = [f"blocks.{layer}.{kind}" for layer in range(self.model.n_layers)]
        capture = self.model.capture(text, sites, context_size=MAX_PROMPT_TOKENS)
        norms = torch.stack([capture.acts[s].float().norm(dim=-1) for s in sites]).numpy()
        tokens = [self.model.tokenizer.decode([t]) for t in capture.token.tolist()]
        return norms, tokens
