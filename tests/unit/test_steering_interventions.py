"""Interventions on a tiny model with constructed SAEs: coefficient 0 and clamping to the
current value change nothing (bit for bit), adding a feature raises it downstream and
raises its tokens' probability, clamps keep the SAE error, edits combine, bad input fails."""

import pytest
import torch

from tests.unit.steering_fixtures import SITE, TOKENS, model, sae  # noqa: F401 (fixtures)
from workbench.errors import UnknownNameError, WorkbenchError
from workbench.sae import SaeConfig, create_sae
from workbench.steering import AblateFeatures, AddFeature, AddVector, ClampFeature, steer, typical_norm

PROMPT = "the cat sat on the mat"


def test_coefficient_zero_leaves_logits_identical(model, sae):
    for units in ("norm", "raw"):
        result = steer(model, [PROMPT, "hello"], [AddFeature(sae, 0, 0.0, units=units)], max_new_tokens=5,
                       keep_logits=True)
        assert torch.equal(result.baseline_logits, result.steered_logits)
        assert result.baseline == result.steered
        assert not any(any(flags) for flags in result.steered_changed)
    # and a non-zero coefficient does change them (the comparison above is not vacuous)
    moved = steer(model, PROMPT, [AddFeature(sae, 0, 2.0)], max_new_tokens=5, keep_logits=True)
    assert not torch.equal(moved.baseline_logits, moved.steered_logits)


def _codes_at_last_token(model, sae, text):
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    x = model.read_sites(ids, torch.ones_like(ids), [SITE])[SITE][0, -1]
    return sae.encode(x)


def test_clamping_to_the_current_value_leaves_logits_identical(model, sae):
    codes = _codes_at_last_token(model, sae, PROMPT)
    active = int(codes.argmax())
    value = float(codes[active])
    assert value > 0
    # positions from:-1 with one new token: the edit touches exactly the prompt's last token
    same = steer(model, PROMPT, [ClampFeature(sae, active, value)], max_new_tokens=1, positions="from:-1",
                 keep_logits=True)
    assert same.applied[SITE] == [1]
    assert torch.equal(same.baseline_logits, same.steered_logits)
    inactive = int((codes == 0).nonzero()[0])
    zero = steer(model, PROMPT, [ClampFeature(sae, inactive, 0.0)], max_new_tokens=1, positions="from:-1",
                 keep_logits=True)
    assert torch.equal(zero.baseline_logits, zero.steered_logits)
    other = steer(model, PROMPT, [ClampFeature(sae, active, value + 3.0)], max_new_tokens=1, positions="from:-1",
                  keep_logits=True)
    assert not torch.equal(other.baseline_logits, other.steered_logits)


def test_clamp_is_decode_of_edited_codes_plus_the_error(model, sae):
    x = torch.randn(5, model.d_model) * typical_norm(model, SITE)
    codes = sae.encode(x)
    clamp = ClampFeature(sae, (3, 7), (2.5, 0.0))
    edited = codes.clone()
    edited[:, 3], edited[:, 7] = 2.5, 0.0
    expected = sae.decode(edited) + (x - sae.decode(codes))  # decode, keeping the SAE error term
    assert torch.allclose(x + clamp.delta(x, None), expected, atol=1e-5)
    ablate = AblateFeatures(sae, [int(codes[0].argmax())])
    after = x + ablate.delta(x, None)
    assert torch.allclose(after[0] - x[0], -codes[0].max() * sae.W_dec[int(codes[0].argmax())], atol=1e-5)


def test_adding_a_feature_raises_it_downstream_and_its_tokens(model, sae):
    feature, token = 1, TOKENS[1]
    ids = torch.tensor([model.tokenizer(PROMPT)["input_ids"]])
    mask = torch.ones_like(ids)
    norm = typical_norm(model, SITE)
    push = AddFeature(sae, feature, 3.0)

    def add(x):
        return x + push.delta(x.reshape(-1, x.shape[-1]), norm).reshape(x.shape)

    plain = model.forward_with_edits(ids, mask, {}, reads=["blocks.1.hook_resid_post"])
    edited = model.forward_with_edits(ids, mask, {SITE: add}, reads=["blocks.1.hook_resid_post"])
    before = sae.encode(plain.reads["blocks.1.hook_resid_post"][0])[:, feature]
    after = sae.encode(edited.reads["blocks.1.hook_resid_post"][0])[:, feature]
    assert (after > before).all()  # the feature is stronger at the next layer, at every position
    # and through generation: the feature's top logit-lens token gains probability at every step
    result = steer(model, PROMPT, [AddFeature(sae, feature, 3.0)], max_new_tokens=4, keep_logits=True)
    p_base = torch.softmax(result.baseline_logits[0], -1)[:, token]
    p_steer = torch.softmax(result.steered_logits[0], -1)[:, token]
    assert (p_steer > p_base).all()
    assert model.tokenizer.decode([token]) in result.steered[0]


def test_norm_units_scale_by_the_typical_norm(model, sae):
    norm = typical_norm(model, SITE)
    assert norm > 0 and typical_norm(model, SITE) == norm  # cached
    x = torch.zeros(2, model.d_model)
    delta = AddFeature(sae, 2, 1.5).delta(x, norm)
    assert torch.allclose(delta.norm(dim=1), torch.full((2,), 1.5 * norm), rtol=1e-5)
    raw = AddFeature(sae, 2, 1.5, units="raw").delta(x, None)
    assert torch.allclose(raw[0], 1.5 * sae.W_dec[2])


def test_interventions_combine_across_sites_and_add_up(model, sae):
    v, w = torch.randn(model.d_model), torch.randn(model.d_model)
    site1 = "blocks.1.hook_resid_pre"
    both = steer(model, PROMPT, [AddVector(SITE, v, 1.0, units="raw"), AddVector(SITE, w, 1.0, units="raw")],
                 max_new_tokens=3, keep_logits=True)
    summed = steer(model, PROMPT, [AddVector(SITE, v + w, 1.0, units="raw")], max_new_tokens=3, keep_logits=True)
    assert torch.allclose(both.steered_logits, summed.steered_logits, atol=1e-4)
    two_sites = steer(model, PROMPT, [AddFeature(sae, 0, 1.0), AddVector(site1, v, 0.5)], max_new_tokens=3,
                      positions="generated")
    assert set(two_sites.applied) == {SITE, site1}
    assert two_sites.applied[SITE] == two_sites.applied[site1] == [0, 1, 1]


def test_bad_input_is_refused(model, sae):
    with pytest.raises(WorkbenchError, match="feature 32 does not exist"):
        AddFeature(sae, 32, 1.0)
    with pytest.raises(WorkbenchError, match="does not exist"):
        ClampFeature(sae, -1, 1.0)
    with pytest.raises(WorkbenchError, match="must be an integer"):
        AddFeature(sae, 1.5, 1.0)
    with pytest.raises(WorkbenchError, match="outside the range"):
        AddFeature(sae, 1, 25.0)
    with pytest.raises(WorkbenchError, match="outside the range"):
        AddFeature(sae, 1, float("nan"))
    with pytest.raises(WorkbenchError, match="outside"):
        ClampFeature(sae, 1, 1e6)
    with pytest.raises(WorkbenchError, match="units"):
        AddFeature(sae, 1, 1.0, units="sigma")
    with pytest.raises(WorkbenchError, match="has width 10 but blocks.0.hook_resid_post of tiny-llama has width 64"):
        steer(model, PROMPT, [AddVector(SITE, torch.ones(10), 1.0)], max_new_tokens=2)
    with pytest.raises(UnknownNameError):
        steer(model, PROMPT, [AddVector("blocks.9.hook_resid_post", torch.ones(64), 1.0)], max_new_tokens=2)
    with pytest.raises(UnknownNameError):
        steer(model, PROMPT, [AddVector("blocks.0.hook_resid_post", torch.ones(64)),
                              AddVector("blocks.5.hook_mlp_out", torch.ones(64))], max_new_tokens=2)
    with pytest.raises(WorkbenchError, match="all zeros"):
        AddVector(SITE, torch.zeros(64))
    narrow = create_sae(SaeConfig("topk", 32, 16, k=2, site=SITE))  # an SAE for another model's width
    with pytest.raises(WorkbenchError, match="writes width 32"):
        steer(model, PROMPT, [AddFeature(narrow, 0, 1.0)], max_new_tokens=2)
    transcoder = create_sae(SaeConfig("topk", 64, 16, k=2, transcoder=True, d_out=64, site=SITE,
                                      site_out="blocks.0.hook_mlp_out"))
    with pytest.raises(WorkbenchError, match="not a transcoder"):
        ClampFeature(transcoder, 0, 1.0)
    with pytest.raises(WorkbenchError, match="cap is 256"):
        steer(model, "word " * 400, [AddFeature(sae, 0, 1.0)], max_new_tokens=2)
    with pytest.raises(WorkbenchError, match="max_new_tokens"):
        steer(model, PROMPT, [AddFeature(sae, 0, 1.0)], max_new_tokens=1000)
    with pytest.raises(WorkbenchError, match="expected interventions"):
        steer(model, PROMPT, ["feature 3"], max_new_tokens=2)
