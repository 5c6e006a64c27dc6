"""Dose-response evaluation: how much concept does steering buy, and at what cost in fluency?

For each target (an SAE feature or a vector) and each coefficient, steer the same prompts
and measure, offline (no LLM judge):

    concept score  mean over prompts and generated steps of the probability mass the
                   steered model puts on the concept tokens (the target's logit-lens
                   top-k tokens, or the first token of each word of a user-given set)
    perplexity     of the generated continuation under the unsteered model (fluency)
    repetition     share of repeated n-grams in the continuation (degenerate loops)

Every target gets a control: a random direction of equal norm at the same site, swept
over the same coefficients and scored on the target's concept tokens. A good feature
raises its concept score well above the control before perplexity blows up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from workbench.errors import WorkbenchError
from workbench.steering.interventions import AddFeature, AddVector, Arm, Intervention

DEFAULT_COEFS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
MAX_SWEEP_POINTS = 24
MAX_SWEEP_NEW_TOKENS = 64
MAX_CONCEPT_WORDS = 64
REPETITION_N = 2


def concept_token_ids(model, target: Intervention | None = None, *, words: Sequence[str] | None = None,
                      k: int = 20) -> torch.Tensor:
    """Token ids [m] that stand for a concept.

    words: the single-token spellings of each word, with and without a leading space and
        capitalised (" wedding", "wedding", " Wedding"; see `word_token_ids`).
    else target: the top-k logit-lens tokens of its direction (a feature's decoder row or
        the vector) through the final norm and unembedding.
    """
    if words is not None:
        words = [w for w in (str(w).strip() for w in words) if w]
        if not words:
            raise WorkbenchError("the concept word set is empty; give at least one word")
        if len(words) > MAX_CONCEPT_WORDS:
            raise WorkbenchError(f"{len(words)} concept words exceed the cap of {MAX_CONCEPT_WORDS}")
        ids: list[int] = []
        for word in words:
            ids += [t for t in word_token_ids(model.tokenizer, word) if t not in ids]
        return torch.tensor(ids, dtype=torch.long)
    if target is None:
        raise WorkbenchError("give a target (feature or vector) or a word set to define the concept")
    direction = _direction(target)
    return model.final_logits(direction[None]).float()[0].topk(k).indices.cpu()


def word_token_ids(tokenizer, word: str, *, strict: bool = True) -> list[int]:
    """Token ids of the spellings of `word` that are ONE token: " word", "word", " Word", "Word".

    A spelling split into several tokens is skipped (its first piece, e.g. "s" of "sport",
    says nothing about the word). strict: raise when no spelling is a single token; else [].
    """
    word = str(word).strip()
    capital = word[:1].upper() + word[1:]
    ids: list[int] = []
    for form in (" " + word, word, " " + capital, capital):
        tokens = tokenizer(form, add_special_tokens=False)["input_ids"]
        if len(tokens) == 1 and int(tokens[0]) not in ids:
            ids.append(int(tokens[0]))
    if not ids and strict:
        pieces = [tokenizer.decode([t]) for t in tokenizer(" " + word, add_special_tokens=False)["input_ids"]]
        raise WorkbenchError(f"{word!r} is not a single token in any spelling (it splits into {pieces}); "
                             "pick a word the tokenizer keeps whole")
    return ids


def _direction(target: Intervention) -> torch.Tensor:
    if isinstance(target, AddFeature):
        return target.direction()
    if isinstance(target, AddVector):
        return target.vector
    raise WorkbenchError(f"a sweep target must be an AddFeature or an AddVector, got {type(target).__name__}")


def repetition_rate(token_ids: Sequence[int], n: int = REPETITION_N) -> float:
    """Share of the n-grams of a sequence that repeat an earlier n-gram (0 = none, ->1 = a loop)."""
    grams = [tuple(token_ids[i:i + n]) for i in range(len(token_ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def perplexity(model, prompts: Sequence[str], continuations: Sequence[Sequence[int]], *,
               batch_size: int = 16) -> list[float]:
    """Per prompt: perplexity of the continuation ids given the prompt, under the unedited model.

    exp(mean negative log-likelihood of the continuation tokens); NaN for an empty one.
    Rows are scored `batch_size` at a time (right-padded forwards).
    """
    from workbench.engine.capture import Window, pad_right

    if len(prompts) != len(continuations):
        raise WorkbenchError("one continuation per prompt is needed")
    prompt_ids = {p: model.tokenizer(p)["input_ids"] for p in set(prompts)}
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        windows, spans = [], []
        for prompt, continuation in zip(prompts[start:start + batch_size], continuations[start:start + batch_size]):
            ids = list(prompt_ids[prompt]) + [int(t) for t in continuation]
            windows.append(Window(ids=ids, doc=[0] * len(ids), pos=list(range(len(ids)))))
            spans.append((len(prompt_ids[prompt]), len(ids)))
        ids, mask = pad_right(windows, 0)
        logprobs = torch.log_softmax(model.logits(ids, mask).float(), dim=-1).cpu()
        for row, (begin, end) in enumerate(spans):
            if end <= begin:
                out.append(float("nan"))
                continue
            targets = ids[row, begin:end]
            nll = -logprobs[row, begin - 1:end - 1].gather(1, targets[:, None]).mean()
            out.append(float(torch.exp(nll)))
    return out


@dataclass
class SweepPoint:
    """One (series, coefficient) point of a dose-response sweep, averaged over prompts."""

    series: str
    kind: str  # "target" | "control" | "baseline"
    coef: float
    concept: float
    perplexity: float
    repetition: float
    texts: list[str]


@dataclass
class DoseResponse:
    """A dose-response sweep: points per series, the unsteered baseline, the settings.

    baselines: per target series, the unsteered continuation scored on that target's
    concept tokens (one generation, scored once per target).
    """

    points: list[SweepPoint]
    baselines: dict[str, SweepPoint]
    concept_tokens: dict[str, list[str]]
    units: str
    positions: str
    max_new_tokens: int
    prompts: list[str]
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def series(self) -> list[str]:
        return list(dict.fromkeys(p.series for p in self.points))

    def rows(self) -> list[dict]:
        """One dict per point (baseline first): series, kind, coef, concept, perplexity, repetition."""
        keep = ("series", "kind", "coef", "concept", "perplexity", "repetition")
        return [{k: getattr(p, k) for k in keep} for p in [*self.baselines.values(), *self.points]]

    def to_dict(self) -> dict:
        return {"rows": self.rows(), "concept_tokens": self.concept_tokens, "units": self.units,
                "positions": self.positions, "max_new_tokens": self.max_new_tokens, "prompts": self.prompts,
                "seconds": round(self.seconds, 2)}


def with_coef(target: Intervention, coef: float) -> Intervention:
    """A copy of an AddFeature/AddVector with another coefficient."""
    return dataclasses.replace(target, coef=coef)


def control_for(target: Intervention, seed: int = 0) -> AddVector:
    """A random direction at the target's site with the norm of the target's direction."""
    from workbench.steering.vectors import random_direction

    direction = _direction(target)
    name = target.describe().split(" x ")[0]
    return AddVector(target.site, random_direction(direction, seed=seed), coef=target.coef, units=target.units,
                     label=f"random ({name})")


def dose_response(
    model,
    prompts: str | Sequence[str],
    targets: Sequence[Intervention],
    coefs: Sequence[float] = DEFAULT_COEFS,
    *,
    concept_words: Sequence[str] | None = None,
    control: bool = True,
    max_new_tokens: int = 24,
    positions: str = "all",
    lens_k: int = 20,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DoseResponse:
    """Sweep coefficients for each target (and its random control); greedy, arms batched.

    Args:
        targets: AddFeature / AddVector prototypes (their own coef is ignored; each is
            swept over `coefs` in its units).
        concept_words: one word set used for every target; default: each target's own
            logit-lens top-`lens_k` tokens.
        control: add a random direction of equal norm per target.
    """
    import time

    from workbench.steering.continuations import _prompt_list, run_arms

    started = time.perf_counter()
    prompts = _prompt_list(prompts)
    targets = list(targets)
    if not targets:
        raise WorkbenchError("give at least one feature or vector to sweep")
    coefs = [float(c) for c in coefs]
    if not coefs:
        raise WorkbenchError("give at least one coefficient")
    n_points = len(targets) * len(coefs) * (2 if control else 1)
    if n_points > MAX_SWEEP_POINTS:
        raise WorkbenchError(f"{n_points} sweep points exceed the cap of {MAX_SWEEP_POINTS}; "
                             "use fewer coefficients or targets")
    if not 1 <= max_new_tokens <= MAX_SWEEP_NEW_TOKENS:
        raise WorkbenchError(f"max_new_tokens must be in 1..{MAX_SWEEP_NEW_TOKENS} for a sweep")
    arms, owners = [Arm("baseline")], [None]
    series_of: dict[int, tuple[str, str]] = {}
    concept: dict[int, torch.Tensor] = {}
    names = _series_names(targets)
    controls = [control_for(t, seed=seed + i) for i, t in enumerate(targets)] if control else []
    for index, target in enumerate(targets):
        ids = concept_token_ids(model, target, words=concept_words, k=lens_k)
        concept[index] = ids
        label = names[index]
        if control:
            controls[index] = dataclasses.replace(controls[index], label=f"random ({label})")
        for coef in coefs:
            series_of[len(arms)] = (label, "target")
            arms.append(Arm(f"{label} x {coef:g}", [with_coef(target, coef)]))
            owners.append(index)
        if control:
            for coef in coefs:
                series_of[len(arms)] = (controls[index].label, "control")
                arms.append(Arm(f"{controls[index].label} x {coef:g}", [with_coef(controls[index], coef)]))
                owners.append(index)
    union = torch.unique(torch.cat(list(concept.values())))
    column = {int(t): i for i, t in enumerate(union.tolist())}

    def concept_probs(logits: torch.Tensor) -> torch.Tensor:  # [B, V] -> [B, U]
        return torch.softmax(logits, dim=-1)[:, union.to(logits.device)]

    outputs = run_arms(model, prompts, arms, max_new_tokens=max_new_tokens, positions=positions, seed=seed,
                       keep_logits=True, logits_fn=concept_probs, batch_arms=True, progress=progress)
    points: list[SweepPoint] = []
    baselines: dict[str, SweepPoint] = {}
    # fluency of every arm's continuations, scored in shared batches
    all_ppl = perplexity(model, prompts * len(outputs), [ids for o in outputs for ids in o.token_ids])
    for arm_index, (arm, output) in enumerate(zip(arms, outputs)):
        owner = owners[arm_index]
        lengths = [len(t) for t in output.token_ids]
        ppl = _mean(all_ppl[arm_index * len(prompts):(arm_index + 1) * len(prompts)])
        rep = _mean([repetition_rate(t) for t in output.token_ids])

        def concept_score(index: int) -> float:
            cols = torch.tensor([column[int(t)] for t in concept[index]])
            mass = output.step_logits[:, :, cols].sum(-1)  # [P, S]
            return _mean([float(mass[p, :max(n, 1)].mean()) for p, n in enumerate(lengths)])

        if owner is None:  # the baseline, scored on every target's concept tokens
            for index, label in enumerate(names):
                baselines[label] = SweepPoint(series=label, kind="baseline", coef=0.0, concept=concept_score(index),
                                              perplexity=ppl, repetition=rep, texts=output.texts)
            continue
        name, kind = series_of[arm_index]
        points.append(SweepPoint(series=name, kind=kind, coef=arm.interventions[0].coef,
                                 concept=concept_score(owner), perplexity=ppl, repetition=rep, texts=output.texts))
    decode = model.tokenizer.decode
    concept_tokens = {names[i]: [decode([t]) for t in ids.tolist()] for i, ids in concept.items()}
    units = targets[0].units
    return DoseResponse(points=points, baselines=baselines, concept_tokens=concept_tokens, units=units,
                        positions=str(positions), max_new_tokens=max_new_tokens, prompts=prompts,
                        seconds=time.perf_counter() - started,
                        settings={"coefs": coefs, "control": control, "seed": seed, "lens_k": lens_k,
                                  "concept_words": list(concept_words) if concept_words else None})


def _series_names(targets: Sequence[Intervention]) -> list[str]:
    """One distinct series name per target: its description without the coefficient."""
    names: list[str] = []
    for target in targets:
        name = target.describe().split(" x ")[0]
        base, n = name, 2
        while name in names:
            name, n = f"{base} #{n}", n + 1
        names.append(name)
    return names


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")
