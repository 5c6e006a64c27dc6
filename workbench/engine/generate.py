"""Generation with edits: nnsight `generate` with edit callables applied on the steps and
positions that a `Positions` mode names.

Why a loop over steps: in nnsight 0.8 a request inside a `generate` block binds only to
the first forward (the prefill) unless it sits under `tracer.iter[...]`; and statements
after a bounded `iter` loop do not run when generation stops early (every row hit EOS).
So the edit loop lives in its own `tracer.invoke(...)` and the generated ids are read in
a second, empty invoke, which always runs.

The KV cache shapes what "every position" means: step 0 (the prefill) sees the whole
left-padded prompt [B, P, d]; every later step sees only the newest token [B, 1, d].
Positions are counted per row from the row's first real prompt token (padding has a
negative position and is never edited), so a generated token j of a row whose prompt has
L tokens sits at position L + j; step s >= 1 processes the token generated at step s-1.

Modes (`Positions.parse`):
    "all"        every computed position at every step: the prompt at step 0, then each
                 new token (Neuronpedia's additive steering).
    "from:P"     positions >= P (CAA's "from the end of the instruction onward");
                 negative P counts from the prompt's end, so "from:-1" is the last prompt
                 token and every generated token (the output-score setting).
    "generated"  generated tokens only: nothing at step 0, the new token afterwards, so
                 the prompt's cache stays clean and the first new token is unsteered.

An edit callable receives only the vectors it edits, `fn(x [n, d], where: EditSlice) ->
[n, d]`, with each vector's batch row and position, so callers can give different rows
different edits (baseline and steered arms in one batch) and tests can count what fired.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from workbench import sites as site_grammar
from workbench.errors import WorkbenchError

# Caps for interactive use: one call never generates or batches more than this.
MAX_NEW_TOKENS = 256
MAX_BATCH_ROWS = 64
POSITION_MODES = ("all", "from", "generated")

# nnsight's note when a bounded step loop outlives an early stop (all rows hit EOS):
# expected here, because the ids are read in a separate invoke that always runs.
_NEVER_REACHED = ".*was never reached.*"


@dataclass(frozen=True)
class Positions:
    """Which token positions an edit touches during generation (see the module docstring)."""

    mode: str = "all"
    """"all", "from" or "generated"."""

    start: int = 0
    """For "from": the first edited position (0 = first prompt token; negative counts back
    from the prompt's end, -1 = its last token). Must be 0 for the other modes."""

    def __post_init__(self) -> None:
        if self.mode not in POSITION_MODES:
            raise WorkbenchError(
                f"unknown positions mode {self.mode!r}; expected 'all', 'from:P' (P an integer) or 'generated'"
            )
        if self.mode != "from" and self.start != 0:
            raise WorkbenchError(f"positions mode {self.mode!r} takes no start position (got {self.start})")

    @classmethod
    def parse(cls, text: "str | Positions") -> "Positions":
        """'all' | 'generated' | 'from:P' (P an integer, negative from the prompt's end)."""
        if isinstance(text, Positions):
            return text
        spec = str(text).strip().lower()
        if spec in ("all", "generated"):
            return cls(spec)
        if spec.startswith("from:"):
            try:
                return cls("from", int(spec[5:]))
            except ValueError:
                pass
        raise WorkbenchError(
            f"cannot read positions {text!r}; expected 'all', 'generated' or 'from:P' with P an integer "
            "(e.g. from:0, from:-1)"
        )

    def __str__(self) -> str:
        return f"from:{self.start}" if self.mode == "from" else self.mode

    def first_positions(self, prompt_lengths: torch.Tensor) -> torch.Tensor:
        """[B] first edited position of each row, given each row's prompt length [B]."""
        if self.mode == "all":
            return torch.zeros_like(prompt_lengths)
        if self.mode == "generated":
            return prompt_lengths.clone()
        if self.start >= 0:
            return torch.full_like(prompt_lengths, self.start)
        return (prompt_lengths + self.start).clamp_min(0)

    def mask(self, step: int, prompt_lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(edit mask [B, width] bool, positions [B, width] long) of the forward at `step`.

        width is the padded prompt length at step 0 and 1 afterwards.
        """
        positions = step_positions(step, prompt_lengths, width)
        first = self.first_positions(prompt_lengths)
        return (positions >= 0) & (positions >= first[:, None]), positions


def step_positions(step: int, prompt_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Positions [B, width] of the tokens a forward processes (left-padded rows; pads < 0)."""
    if step == 0:
        columns = torch.arange(width, device=prompt_lengths.device)
        return columns[None, :] - (width - prompt_lengths)[:, None]
    return (prompt_lengths + step - 1)[:, None]


@dataclass(frozen=True)
class EditSlice:
    """Where the vectors handed to an edit callable sit.

    step: generation step (0 = prefill). rows: [n] batch row of each vector.
    positions: [n] position of each vector in its row (0 = first prompt token).
    """

    step: int
    rows: torch.Tensor
    positions: torch.Tensor


EditFn = Callable[[torch.Tensor, EditSlice], torch.Tensor]


@dataclass
class GenerationResult:
    """What `generate_with_edits` produced.

    new_tokens: [B, S] generated ids (S = steps run; rows that stopped early are padded
        with the pad id after their EOS).
    new_lengths: [B] generated tokens per row up to and including its first EOS.
    prompt_lengths: [B] real prompt tokens per row.
    step_logits: [B, S, V] float32 next-token logits of every step on CPU (the raw model
        output, before sampling processors), or [B, S, ...] of logits_fn, when asked for.
    applied: site -> vectors edited at each step (list of length S); counts what fired.
    """

    new_tokens: torch.Tensor
    new_lengths: torch.Tensor
    prompt_lengths: torch.Tensor
    step_logits: torch.Tensor | None = None
    applied: dict[str, list[int]] = field(default_factory=dict)

    def row_tokens(self, row: int) -> list[int]:
        """The ids generated for one row, up to and including its EOS."""
        return self.new_tokens[row, : int(self.new_lengths[row])].tolist()


def encode_prompts(model, prompts: Sequence[str], *, max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise prompts and pad them on the left -> (input_ids [B, P], attention_mask [B, P]).

    Left padding keeps every row's last prompt token in the last column, which is what
    generation extends. Raises on an empty prompt or one longer than the cap.
    """
    if not prompts:
        raise WorkbenchError("no prompt given")
    rows = []
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise WorkbenchError(f"prompt {index} is empty; type a prompt")
        ids = model.tokenizer(prompt)["input_ids"]
        if len(ids) > max_prompt_tokens:
            raise WorkbenchError(
                f"prompt {index} has {len(ids)} tokens; the cap is {max_prompt_tokens}. Shorten it"
            )
        rows.append(ids)
    return left_pad(rows, pad_id(model))


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (input_ids, attention_mask) [B, P], padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def pad_id(model) -> int:
    tok = model.tokenizer
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    return 0


def _check_edit_sites(model, edits: dict[str, EditFn]) -> list[str]:
    for site in edits:
        model.check_site(site)
        if site_grammar.parse_site(site).is_pattern:
            raise WorkbenchError(f"{site} holds attention probabilities; steer a vector site "
                                 "(e.g. blocks.L.hook_resid_post)")
    return model.ordered(list(edits))


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Fork the RNG (the caller's state is left untouched) and seed it, if a seed is given."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


def generate_with_edits(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    edits: dict[str, EditFn] | None = None,
    *,
    positions: Positions | str = "all",
    max_new_tokens: int = 32,
    do_sample: bool = False,
    seed: int | None = 0,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Generate from left-padded prompts with edits applied at sites on every step.

    Args:
        model: a causal workbench Model.
        input_ids, attention_mask: [B, P], padded on the left (`encode_prompts`).
        edits: site -> fn(x [n, d], EditSlice) -> [n, d]; x holds only the vectors that
            `positions` selects at this step (the function is not called when n = 0).
        positions: a Positions or its text form ("all", "from:P", "generated").
        max_new_tokens: steps to run (1..MAX_NEW_TOKENS); fewer when every row stops at EOS.
        do_sample, temperature, top_p, top_k: sampling (greedy by default).
        seed: seeds torch's RNG inside a fork, so equal seeds give equal samples and the
            caller's RNG state is untouched.
        stop_at_eos: False forbids EOS (min_new_tokens = max_new_tokens): exactly
            max_new_tokens tokens per row.
        keep_logits: also return every step's next-token logits [B, S, V] (float32, CPU).
        logits_fn: with keep_logits, keep logits_fn(logits [B, V] float32) -> [B, ...] per
            step instead of the full logits (e.g. probabilities of a few tokens: saves memory).
        progress: called as progress(step, max_new_tokens) after each step's forward.
    """
    import nnsight

    if not model.is_causal:
        raise WorkbenchError(f"{model.name} is not a causal language model, so it cannot generate")
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise WorkbenchError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise WorkbenchError(f"input_ids and attention_mask must both be [batch, tokens], got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if input_ids.shape[0] > MAX_BATCH_ROWS:
        raise WorkbenchError(f"{input_ids.shape[0]} rows exceed the batch cap of {MAX_BATCH_ROWS}; split the request")
    if input_ids.shape[1] + max_new_tokens > model.context_size:
        raise WorkbenchError(f"{input_ids.shape[1]} prompt tokens + {max_new_tokens} new tokens exceed the "
                             f"model's context of {model.context_size}")
    if attention_mask[:, -1].min() < 1:
        raise WorkbenchError("prompts must be padded on the left (the last column must be real tokens)")
    positions = Positions.parse(positions)
    edits = dict(edits or {})
    ordered = _check_edit_sites(model, edits)
    steps = int(max_new_tokens)
    prompt_lengths = attention_mask.sum(1).to(torch.long)
    device = model.device
    groups = _group_by_location(model, ordered)
    applied: dict[str, list[int]] = {site: [] for site in ordered}
    kwargs = dict(max_new_tokens=steps, do_sample=bool(do_sample), pad_token_id=pad_id(model))
    if do_sample:
        kwargs.update(temperature=float(temperature), top_p=top_p, top_k=top_k)
    else:  # the model's generation config may carry sampling defaults; greedy ignores them
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if not stop_at_eos:
        kwargs["min_new_tokens"] = steps
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    lengths_on_device = prompt_lengths.to(device)

    def apply(site: str, value: torch.Tensor, step: int) -> None:
        mask, where = positions.mask(step, lengths_on_device, value.shape[1])
        rows, cols = mask.nonzero(as_tuple=True)
        applied[site].append(int(rows.numel()))
        if rows.numel() == 0:
            return
        selected = value[rows, cols]
        replaced = edits[site](selected, EditSlice(step=step, rows=rows, positions=where[rows, cols]))
        if replaced.shape != selected.shape:
            raise WorkbenchError(f"the edit at {site} returned shape {tuple(replaced.shape)}, "
                                 f"expected {tuple(selected.shape)}")
        value[rows, cols] = replaced.to(value.dtype)

    with model.lock, torch.no_grad(), _seeded(seed if do_sample else None, device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NEVER_REACHED)
        with model.nn.generate(**kwargs) as tracer:
            step_logits = nnsight.save([])
            with tracer.invoke(inputs):
                for step in tracer.iter[:steps]:
                    for location, members in groups:
                        port = model._port(location)
                        for site, index in members:
                            apply(site, port[index] if index is not None else port, int(step))
                    if keep_logits:
                        logits = model.nn.output.logits[:, -1].float()
                        step_logits.append((logits_fn(logits) if logits_fn is not None else logits).cpu())
                    if progress is not None:
                        progress(int(step) + 1, steps)
            with tracer.invoke():
                sequences = tracer.result.save()
    sequences = sequences.detach().cpu()
    new_tokens = sequences[:, input_ids.shape[1]:]
    return GenerationResult(
        new_tokens=new_tokens,
        new_lengths=_lengths_to_eos(new_tokens, model.tokenizer.eos_token_id),
        prompt_lengths=prompt_lengths,
        step_logits=torch.stack(list(step_logits), dim=1) if keep_logits and len(step_logits) else None,
        applied=applied,
    )


def _group_by_location(model, ordered: list[str]):
    """Sites grouped by the module port they live on, in forward order (read each port once)."""
    from workbench.engine.model import _group_by_location as group

    return group(ordered, model._location)


def _lengths_to_eos(new_tokens: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """[B] tokens up to and including the first EOS of each row (all of them if none)."""
    steps = new_tokens.shape[1]
    if eos_id is None or steps == 0:
        return torch.full((new_tokens.shape[0],), steps, dtype=torch.long)
    is_eos = new_tokens == int(eos_id)
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(is_eos[:, 0], steps,
                                                                                   dtype=torch.long))
    return first.to(torch.long)
