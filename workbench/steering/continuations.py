"""`steer`: baseline and steered continuations of the same prompts from one call.

    result = steer(model, "From my experience,", [AddFeature(sae, 123, coef=4.0)],
                   max_new_tokens=32, positions="all", seed=0)
    result.baseline[0], result.steered[0], result.steered_changed[0]

How the arms (baseline, steered, sweep points ...) are generated, and why:
- by default each arm is its own generation over the prompts, every arm under the same
  seed and with the same batch shape. An arm's output then depends on nothing but its
  own edits: coefficient 0 reproduces the baseline logits bit for bit, and greedy or
  sampled, any difference comes from the edit alone. (Rows of one batch are not
  bit-identical on CPU: identical rows of a batched decode step differ by ~1e-7.)
- `batch_arms=True` (greedy only; what sweeps use) puts many arms into one batched
  generation, in chunks of at most MAX_BATCH_ROWS rows: a 15-point sweep costs about one
  generation instead of 15, and logits agree with separate runs to float rounding.
  Sampling never batches arms: each row of a batch draws different random numbers.
The whole request holds the model's lock, so requests from several threads are
serialised and never interleave.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from workbench.engine.generate import MAX_BATCH_ROWS, Positions, encode_prompts, generate_with_edits
from workbench.errors import WorkbenchError
from workbench.steering.interventions import Arm, Intervention, check_interventions, compile_arms

MAX_PROMPT_TOKENS = 256
MAX_PROMPTS = 16
MAX_ARMS = 128
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass
class ArmOutput:
    """One arm's continuations.

    token_ids: per prompt, the generated ids (up to and including EOS).
    texts: per prompt, the decoded continuation.
    step_logits: [n_prompts, S, V] next-token logits per step (float32, CPU) when kept.
    applied: site -> vectors this arm's rows had edited at each step.
    """

    label: str
    interventions: list[str]
    token_ids: list[list[int]]
    texts: list[str]
    step_logits: torch.Tensor | None = None
    applied: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class SteerResult:
    """Baseline and steered continuations, token by token, with the changed tokens marked.

    baseline / steered: per prompt, the continuation text (prompt not included).
    *_tokens: per prompt, the continuation split into decoded tokens.
    *_changed: per prompt, one bool per token: True where the token is not part of the
        longest matching blocks of the two sequences (difflib), i.e. changed by steering.
    applied: site -> vectors the edit touched at each generation step (steered arm).
    """

    prompts: list[str]
    baseline: list[str]
    steered: list[str]
    baseline_tokens: list[list[str]]
    steered_tokens: list[list[str]]
    baseline_changed: list[list[bool]]
    steered_changed: list[list[bool]]
    interventions: list[str]
    positions: str
    max_new_tokens: int
    seed: int | None
    do_sample: bool
    applied: dict[str, list[int]]
    seconds: float
    baseline_logits: torch.Tensor | None = None
    steered_logits: torch.Tensor | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (no tensors): the CLI's --json object."""
        return {
            "prompt": self.prompts[0] if len(self.prompts) == 1 else self.prompts,
            "baseline": self.baseline[0] if len(self.prompts) == 1 else self.baseline,
            "steered": self.steered[0] if len(self.prompts) == 1 else self.steered,
            "baseline_tokens": self.baseline_tokens, "steered_tokens": self.steered_tokens,
            "changed_tokens": [sum(flags) for flags in self.steered_changed],
            "interventions": self.interventions, "positions": self.positions,
            "max_new_tokens": self.max_new_tokens, "seed": self.seed, "do_sample": self.do_sample,
            "edits_per_step": self.applied, "seconds": round(self.seconds, 3),
        }


def changed_marks(a: Sequence[int], b: Sequence[int]) -> tuple[list[bool], list[bool]]:
    """(marks for a, marks for b): True for tokens outside the matching blocks of a and b."""
    marks_a, marks_b = [True] * len(a), [True] * len(b)
    matcher = difflib.SequenceMatcher(a=list(a), b=list(b), autojunk=False)
    for block in matcher.get_matching_blocks():
        for i in range(block.size):
            marks_a[block.a + i] = False
            marks_b[block.b + i] = False
    return marks_a, marks_b


def _prompt_list(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise WorkbenchError("no prompt given")
    if len(prompts) > MAX_PROMPTS:
        raise WorkbenchError(f"{len(prompts)} prompts exceed the cap of {MAX_PROMPTS} per request")
    return prompts


def run_arms(
    model,
    prompts: str | Sequence[str],
    arms: Sequence[Arm],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    positions: Positions | str = "all",
    seed: int | None = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_arms: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[ArmOutput]:
    """Generate every arm's continuations of the same prompts (see the module docstring).

    Arguments as for `steer`, plus batch_arms (several greedy arms per generation) and
    logits_fn (keep a reduction of each step's logits, see generate_with_edits).
    Returns one ArmOutput per arm, in order. Holds the model lock for the whole request.
    """
    prompts = _prompt_list(prompts)
    arms = list(arms)
    if not arms:
        raise WorkbenchError("no arms to run")
    if len(arms) > MAX_ARMS:
        raise WorkbenchError(f"{len(arms)} arms exceed the cap of {MAX_ARMS}; sweep fewer points")
    positions = Positions.parse(positions)
    for arm in arms:
        check_interventions(model, arm.interventions)
    ids, mask = encode_prompts(model, prompts, max_prompt_tokens=MAX_PROMPT_TOKENS)
    n_prompts = len(prompts)
    if do_sample or not batch_arms:
        chunks = [[i] for i in range(len(arms))]
    else:
        per_chunk = max(1, MAX_BATCH_ROWS // n_prompts)
        chunks = [list(range(i, min(i + per_chunk, len(arms)))) for i in range(0, len(arms), per_chunk)]
    outputs: list[ArmOutput | None] = [None] * len(arms)
    total = len(chunks) * int(max_new_tokens)
    with model.lock:
        for chunk_index, chunk in enumerate(chunks):
            chunk_arms = [arms[i] for i in chunk]
            edits = compile_arms(model, chunk_arms, n_prompts)
            report = None
            if progress is not None:
                done = chunk_index * int(max_new_tokens)

                def report(step: int, _steps: int, _done: int = done) -> None:
                    progress(_done + step, total)

            result = generate_with_edits(
                model, ids.repeat(len(chunk), 1), mask.repeat(len(chunk), 1), edits, positions=positions,
                max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed, temperature=temperature,
                top_p=top_p, stop_at_eos=stop_at_eos, keep_logits=keep_logits, logits_fn=logits_fn,
                progress=report,
            )
            for local, arm_index in enumerate(chunk):
                rows = range(local * n_prompts, (local + 1) * n_prompts)
                token_ids = [result.row_tokens(r) for r in rows]
                arm = arms[arm_index]
                outputs[arm_index] = ArmOutput(
                    label=arm.label,
                    interventions=[i.describe() for i in arm.interventions],
                    token_ids=token_ids,
                    texts=[model.tokenizer.decode(t, skip_special_tokens=True) for t in token_ids],
                    step_logits=(result.step_logits[local * n_prompts:(local + 1) * n_prompts]
                                 if result.step_logits is not None else None),
                    applied=_arm_counts(result, arm, len(chunk)),
                )
    return [o for o in outputs if o is not None]


def _arm_counts(result, arm: Arm, arms_in_batch: int) -> dict[str, list[int]]:
    """Vectors edited per step for one arm's rows.

    The engine counts the vectors handed to a site's edit over the whole batch; every arm
    of a batch repeats the same prompts, so each arm's share is that count / arms_in_batch.
    """
    sites = {i.site for i in arm.interventions}
    return {site: [c // arms_in_batch for c in counts] for site, counts in result.applied.items() if site in sites}


def steer(
    model,
    prompts: str | Sequence[str],
    interventions: Sequence[Intervention],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    positions: Positions | str = "all",
    seed: int | None = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SteerResult:
    """Baseline and steered continuations of `prompts` in one call (same seed, same settings).

    Args:
        interventions: AddFeature / AddVector / ClampFeature / AblateFeatures, any mix of
            sites; an empty list gives two identical continuations.
        positions: "all" | "from:P" | "generated" (see workbench.engine.generate).
        seed, do_sample, temperature, top_p: greedy by default; sampling is seeded.
        keep_logits: keep both arms' per-step logits (`baseline_logits`, `steered_logits`,
            [n_prompts, S, V]).
    """
    started = time.perf_counter()
    interventions = list(interventions)
    positions = Positions.parse(positions)
    baseline, steered = run_arms(
        model, prompts, [Arm("baseline"), Arm("steered", interventions)], max_new_tokens=max_new_tokens,
        positions=positions, seed=seed, do_sample=do_sample, temperature=temperature, top_p=top_p,
        stop_at_eos=stop_at_eos, keep_logits=keep_logits, progress=progress,
    )
    decode = model.tokenizer.decode
    baseline_changed, steered_changed = [], []
    for a, b in zip(baseline.token_ids, steered.token_ids):
        marks_a, marks_b = changed_marks(a, b)
        baseline_changed.append(marks_a)
        steered_changed.append(marks_b)
    return SteerResult(
        prompts=_prompt_list(prompts),
        baseline=baseline.texts,
        steered=steered.texts,
        baseline_tokens=[[decode([t]) for t in ids] for ids in baseline.token_ids],
        steered_tokens=[[decode([t]) for t in ids] for ids in steered.token_ids],
        baseline_changed=baseline_changed,
        steered_changed=steered_changed,
        interventions=steered.interventions,
        positions=str(positions),
        max_new_tokens=int(max_new_tokens),
        seed=seed,
        do_sample=bool(do_sample),
        applied=steered.applied,
        seconds=time.perf_counter() - started,
        baseline_logits=baseline.step_logits,
        steered_logits=steered.step_logits,
    )
