"""Steering on the real SmolLM2-135M with its registered layer-15 SAE (slow tier, kept short).

Uses the shipped SAE (data/saes/smollm2-135m/batchtopk-l15-8k, or the default of another root
registered with WORKBENCH_SAE_DIRS). Without any registered SAE the test skips and says why
(fails under CI=true).
"""

import pytest
import torch

from tests.conftest import cached_model
from tests.missing_inputs import skip_or_fail

pytestmark = pytest.mark.slow

PROMPT = "From my experience, the best way to learn is"


@pytest.fixture(scope="module")
def model_and_sae():
    from workbench.catalog import default_sae
    from workbench.steering.resolve import open_sae

    model = cached_model("smollm2-135m")
    entry = default_sae(model.name)
    if entry is None:
        message = ("NO SAE registered for smollm2-135m: data/saes/smollm2-135m/ is missing; restore it or set "
                   "WORKBENCH_SAE_DIRS to a root holding smollm2-135m/<sae>/")
        skip_or_fail(message)
    return model, open_sae(model, entry.name)[1]


def test_steering_smollm2_with_its_sae(model_and_sae):
    from workbench.steering import AddFeature, concept_token_ids, steer, typical_norm

    model, sae = model_and_sae
    site = sae.cfg.site
    layer = int(site.split(".")[1])
    next_site = f"blocks.{layer + 1}.hook_resid_post"
    ids = torch.tensor([model.tokenizer(PROMPT)["input_ids"]])
    mask = torch.ones_like(ids)
    # a feature that is silent at the prompt's last token, so "raises" is unambiguous
    base_codes = sae.encode(model.read_sites(ids, mask, [site])[site][0, -1])
    feature = int((base_codes == 0).nonzero()[0])

    zero = steer(model, PROMPT, [AddFeature(sae, feature, 0.0)], max_new_tokens=3, keep_logits=True)
    assert torch.equal(zero.baseline_logits, zero.steered_logits)

    # adding the direction raises the feature's activation one layer later ...
    push = AddFeature(sae, feature, 1.0)
    norm = typical_norm(model, site)

    def add(x):
        return (x.float() + push.delta(x.reshape(-1, x.shape[-1]), norm).reshape(x.shape)).to(x.dtype)

    plain = model.forward_with_edits(ids, mask, {}, reads=[next_site]).reads[next_site][0]
    edited = model.forward_with_edits(ids, mask, {site: add}, reads=[next_site]).reads[next_site][0]
    before, after = sae.encode(plain)[:, feature], sae.encode(edited)[:, feature]
    assert float(after[1:].mean()) > float(before[1:].mean()) + 1.0

    # ... and the probability of its top logit-lens tokens at the next token
    lens = concept_token_ids(model, push, k=20)
    steered = steer(model, PROMPT, [AddFeature(sae, feature, 1.0)], max_new_tokens=4, keep_logits=True)
    mass_base = torch.softmax(steered.baseline_logits[0], -1)[:, lens].sum(-1)
    mass_steer = torch.softmax(steered.steered_logits[0], -1)[:, lens].sum(-1)
    assert float(mass_steer[0]) > float(mass_base[0])
    assert steered.applied[site] == [ids.shape[1], 1, 1, 1]
