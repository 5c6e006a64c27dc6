"""Generation with edits (workbench/engine/generate.py): the edit fires on exactly the steps
and positions each mode names, edits take effect, seeds reproduce, bad input is refused."""

import pytest
import torch

from tests.conftest import cached_model
from workbench.engine.generate import (
    MAX_NEW_TOKENS,
    Positions,
    _lengths_to_eos,
    encode_prompts,
    generate_with_edits,
    left_pad,
)
from workbench.errors import UnknownNameError, WorkbenchError

SITE = "blocks.0.hook_resid_post"
PROMPTS = ["the cat sat on the mat today", "hello there"]


@pytest.fixture(scope="module")
def model():
    return cached_model("tiny-llama")


@pytest.fixture(scope="module")
def batch(model):
    return encode_prompts(model, PROMPTS, max_prompt_tokens=64)


def recorded_run(model, batch, positions, steps=4):
    log = []

    def record(x, where):
        log.append((where.step, where.rows.tolist(), where.positions.tolist()))
        return x

    result = generate_with_edits(model, *batch, {SITE: record}, positions=positions, max_new_tokens=steps,
                                 stop_at_eos=False)
    return result, log


def expected_slices(lengths, steps, first):
    """(step, rows, positions) the mode should edit, with first[r] the first edited position of row r."""
    out = []
    for step in range(steps):
        rows, positions = [], []
        for r, n in enumerate(lengths):
            candidates = range(n) if step == 0 else [n + step - 1]
            for p in candidates:
                if p >= first[r]:
                    rows.append(r)
                    positions.append(p)
        if rows:
            out.append((step, rows, positions))
    return out


@pytest.mark.parametrize("spec", ["all", "from:3", "from:-1", "from:-2", "generated", "from:12"])
def test_edit_fires_on_exactly_the_named_steps_and_positions(model, batch, spec):
    ids, mask = batch
    lengths = mask.sum(1).tolist()
    assert lengths[0] != lengths[1]  # rows of different lengths: padding must not shift positions
    steps = 4
    result, log = recorded_run(model, batch, spec, steps)
    mode = Positions.parse(spec)
    if mode.mode == "all":
        first = [0, 0]
    elif mode.mode == "generated":
        first = lengths
    else:
        first = [mode.start if mode.start >= 0 else max(n + mode.start, 0) for n in lengths]
    expected = expected_slices(lengths, steps, first)
    assert log == expected
    # the per-step counts the engine reports agree, including steps with nothing to edit
    counts = [0] * steps
    for step, rows, _ in expected:
        counts[step] = len(rows)
    assert result.applied[SITE] == counts


def test_counts_for_all_and_generated_by_hand(model, batch):
    ids, mask = batch
    total_prompt = int(mask.sum())
    result, _ = recorded_run(model, batch, "all", steps=5)
    assert result.applied[SITE] == [total_prompt, 2, 2, 2, 2]  # whole prompts at step 0, one new token per row after
    result, _ = recorded_run(model, batch, "generated", steps=5)
    assert result.applied[SITE] == [0, 2, 2, 2, 2]
    result, _ = recorded_run(model, batch, "from:-1", steps=5)
    assert result.applied[SITE] == [2, 2, 2, 2, 2]


def test_edits_take_effect_on_the_steps_they_fire(model, batch):
    push = torch.zeros(model.d_model)
    push[:8] = 50.0

    def add(x, where):
        return x + push

    plain = generate_with_edits(model, *batch, {}, max_new_tokens=4, keep_logits=True, stop_at_eos=False)
    edited = generate_with_edits(model, *batch, {SITE: add}, positions="generated", max_new_tokens=4,
                                 keep_logits=True, stop_at_eos=False)
    # "generated" leaves the prefill alone, so step 0's logits are untouched; later steps change
    assert torch.equal(plain.step_logits[:, 0], edited.step_logits[:, 0])
    assert not torch.allclose(plain.step_logits[:, 1], edited.step_logits[:, 1])
    everywhere = generate_with_edits(model, *batch, {SITE: add}, positions="all", max_new_tokens=4,
                                     keep_logits=True, stop_at_eos=False)
    assert not torch.allclose(plain.step_logits[:, 0], everywhere.step_logits[:, 0])


def test_identity_edit_changes_nothing_and_sampling_is_seeded(model, batch):
    plain = generate_with_edits(model, *batch, {}, max_new_tokens=6, keep_logits=True)
    identity = generate_with_edits(model, *batch, {SITE: lambda x, w: x}, max_new_tokens=6, keep_logits=True)
    assert torch.equal(plain.step_logits, identity.step_logits)
    assert torch.equal(plain.new_tokens, identity.new_tokens)
    state = torch.random.get_rng_state()
    a = generate_with_edits(model, *batch, {}, max_new_tokens=12, do_sample=True, seed=7)
    b = generate_with_edits(model, *batch, {}, max_new_tokens=12, do_sample=True, seed=7)
    c = generate_with_edits(model, *batch, {}, max_new_tokens=12, do_sample=True, seed=8)
    assert torch.equal(a.new_tokens, b.new_tokens)
    assert not torch.equal(a.new_tokens, c.new_tokens)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched


def test_logits_fn_keeps_a_reduction(model, batch):
    full = generate_with_edits(model, *batch, {}, max_new_tokens=3, keep_logits=True)
    picked = generate_with_edits(model, *batch, {}, max_new_tokens=3, keep_logits=True,
                                 logits_fn=lambda logits: logits[:, [5, 9]])
    assert picked.step_logits.shape == (2, 3, 2)
    assert torch.equal(picked.step_logits, full.step_logits[:, :, [5, 9]])


def test_positions_parse_and_lengths():
    assert Positions.parse("all") == Positions("all")
    assert Positions.parse(" From:-1 ") == Positions("from", -1)
    assert str(Positions.parse("from:4")) == "from:4"
    assert str(Positions.parse("generated")) == "generated"
    for bad in ("every", "from:", "from:x", "from 3", ""):
        with pytest.raises(WorkbenchError, match="positions"):
            Positions.parse(bad)
    with pytest.raises(WorkbenchError, match="takes no start"):
        Positions("all", 3)
    tokens = torch.tensor([[5, 0, 0, 0], [5, 6, 7, 8], [0, 0, 0, 0]])
    assert _lengths_to_eos(tokens, 0).tolist() == [2, 4, 1]
    ids, mask = left_pad([[1, 2, 3], [4]], pad=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_input_is_refused(model, batch):
    ids, mask = batch
    with pytest.raises(WorkbenchError, match="max_new_tokens"):
        generate_with_edits(model, ids, mask, {}, max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(WorkbenchError, match="max_new_tokens"):
        generate_with_edits(model, ids, mask, {}, max_new_tokens=0)
    with pytest.raises(UnknownNameError, match="blocks.7.hook_resid_post"):
        generate_with_edits(model, ids, mask, {"blocks.7.hook_resid_post": lambda x, w: x}, max_new_tokens=2)
    with pytest.raises(UnknownNameError):
        generate_with_edits(model, ids, mask, {"blocks.0.resid": lambda x, w: x}, max_new_tokens=2)
    with pytest.raises(WorkbenchError, match="attention probabilities"):
        generate_with_edits(model, ids, mask, {"blocks.0.attn.hook_pattern": lambda x, w: x}, max_new_tokens=2)
    with pytest.raises(WorkbenchError, match="batch cap"):
        generate_with_edits(model, ids.repeat(40, 1), mask.repeat(40, 1), {}, max_new_tokens=2)
    with pytest.raises(WorkbenchError, match="padded on the left"):
        generate_with_edits(model, ids.flip(1), mask.flip(1), {}, max_new_tokens=2)
    with pytest.raises(WorkbenchError, match="returned shape"):
        generate_with_edits(model, ids, mask, {SITE: lambda x, w: x[:1]}, max_new_tokens=2)
    with pytest.raises(WorkbenchError, match="cap is 4"):
        encode_prompts(model, ["a long prompt with many words in it"], max_prompt_tokens=4)
    with pytest.raises(WorkbenchError, match="empty"):
        encode_prompts(model, ["  "], max_prompt_tokens=4)
    with pytest.raises(WorkbenchError, match="not a causal"):
        bert = cached_model("tiny-bert")
        generate_with_edits(bert, ids, mask, {}, max_new_tokens=2)
