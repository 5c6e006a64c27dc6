"""Dose-response evaluation: repetition, perplexity, concept tokens, and a sweep in which a
token-aligned feature beats its random control; plus two steering requests at once."""

import math
import threading

import pytest
import torch

from tests.unit.steering_fixtures import TOKENS, model, sae  # noqa: F401 (fixtures)
from workbench.errors import WorkbenchError
from workbench.steering import AddFeature, concept_token_ids, dose_response, perplexity, repetition_rate, steer

PROMPT = "the cat sat on the mat"


def test_repetition_rate():
    assert repetition_rate([1, 2, 3, 4]) == 0.0
    assert repetition_rate([7, 7, 7, 7, 7]) == 0.75  # 4 bigrams, 1 distinct
    assert repetition_rate([1, 2, 1, 2, 1], n=2) == 0.5
    assert repetition_rate([1]) == 0.0


def test_perplexity_is_exp_of_the_continuations_mean_nll(model):
    prompts = ["the cat sat", "hello"]
    continuations = [[300, 400, 500], [42]]
    got = perplexity(model, prompts, continuations)
    for prompt, continuation, value in zip(prompts, continuations, got):
        ids = model.tokenizer(prompt)["input_ids"] + continuation
        logits = model.logits(torch.tensor([ids]))[0]
        logprobs = torch.log_softmax(logits, -1)
        start = len(ids) - len(continuation)
        nll = -sum(float(logprobs[i - 1, ids[i]]) for i in range(start, len(ids))) / len(continuation)
        assert math.isclose(value, math.exp(nll), rel_tol=1e-4)
    assert math.isnan(perplexity(model, ["x"], [[]])[0])


def test_concept_tokens_from_words_and_from_a_feature(model, sae):
    ids = concept_token_ids(model, words=["the"]).tolist()
    for form in (" the", "the"):
        tokens = model.tokenizer(form, add_special_tokens=False)["input_ids"]
        assert len(tokens) == 1 and tokens[0] in ids
    assert all(len(model.tokenizer.decode([t]).strip()) == 3 for t in ids)  # whole words only
    lens = concept_token_ids(model, AddFeature(sae, 2, 1.0), k=5)
    assert int(lens[0]) == TOKENS[2]
    with pytest.raises(WorkbenchError, match="empty"):
        concept_token_ids(model, words=[" ", ""])
    # "cat" splits into pieces in the tiny vocabulary: its first piece would not stand for it
    with pytest.raises(WorkbenchError, match="not a single token"):
        concept_token_ids(model, words=["cat"])


def test_sweep_feature_beats_its_random_control(model, sae):
    coefs = [0.0, 1.0, 3.0]
    result = dose_response(model, [PROMPT, "hello there"], [AddFeature(sae, 1, 1.0)], coefs, max_new_tokens=6)
    assert [p.coef for p in result.points] == coefs * 2
    assert [p.kind for p in result.points] == ["target"] * 3 + ["control"] * 3
    target = [p for p in result.points if p.kind == "target"]
    control = [p for p in result.points if p.kind == "control"]
    base = result.baselines["feature 1"]
    # coefficient 0 is the baseline, for the feature and for its control
    for zero in (target[0], control[0]):
        assert math.isclose(zero.concept, base.concept, rel_tol=1e-4)
        assert math.isclose(zero.perplexity, base.perplexity, rel_tol=1e-4)
    # (tiny-llama's random logits are flat: concept mass saturates near 0.03, so the margins are ratios)
    assert target[1].concept > 1.3 * base.concept and target[2].concept >= target[1].concept
    assert target[2].concept > 1.3 * control[2].concept
    assert result.concept_tokens["feature 1"][0] == model.tokenizer.decode([TOKENS[1]])
    rows = result.rows()
    assert rows[0]["kind"] == "baseline" and len(rows) == 7
    words = dose_response(model, PROMPT, [AddFeature(sae, 1, 1.0)], [2.0], control=False, max_new_tokens=4,
                          concept_words=["the"])
    assert len(words.points) == 1 and words.settings["concept_words"] == ["the"]
    with pytest.raises(WorkbenchError, match="sweep points exceed"):
        dose_response(model, PROMPT, [AddFeature(sae, 1, 1.0)], list(range(20)), max_new_tokens=4)
    with pytest.raises(WorkbenchError, match="at least one feature"):
        dose_response(model, PROMPT, [], [1.0])


def test_two_steering_requests_at_once_both_return_correct_results(model, sae):
    requests = {
        "a": ([PROMPT], [AddFeature(sae, 0, 2.0)]),
        "b": (["hello there", "a dog"], [AddFeature(sae, 3, -1.5), AddFeature(sae, 2, 1.0)]),
    }
    expected = {key: steer(model, prompts, items, max_new_tokens=8, keep_logits=True)
                for key, (prompts, items) in requests.items()}
    results, errors = {}, []
    start = threading.Barrier(2)

    def worker(key):
        try:
            start.wait()
            prompts, items = requests[key]
            results[key] = steer(model, prompts, items, max_new_tokens=8, keep_logits=True)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(key,)) for key in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for key in requests:
        assert results[key].steered == expected[key].steered
        assert results[key].baseline == expected[key].baseline
        assert torch.equal(results[key].steered_logits, expected[key].steered_logits)
