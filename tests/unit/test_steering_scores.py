"""Input and output scores (Arad et al.) on tiny-llama with constructed features: the formula,
batching, the ranking of token-aligned features, and storage of the scores."""

import math

import pytest
import torch

from tests.unit.steering_fixtures import SITE, TOKENS, model, sae  # noqa: F401 (fixtures)
from workbench.errors import WorkbenchError
from workbench.steering.scores import (
    NEUTRAL_PROMPT,
    TopExamples,
    input_scores_from_examples,
    logit_lens_tokens,
    output_scores,
    top_examples,
    top_examples_from_store,
)
from workbench.steering.scores_store import read_scores, sidecar_path, write_scores


def test_logit_lens_tokens_are_the_top_tokens_of_each_decoder_row(model, sae):
    lens = logit_lens_tokens(model, sae, k=5, batch_size=7)
    assert lens.shape == (sae.cfg.d_sae, 5)
    expected = model.final_logits(sae.W_dec).topk(5, dim=-1).indices
    assert torch.equal(lens, expected)
    for feature, token in enumerate(TOKENS):  # constructed features point at their tokens
        assert int(lens[feature, 0]) == token


def _manual_output_score(model, sae, feature, lens, amp=10.0):
    ids = torch.tensor([model.tokenizer(NEUTRAL_PROMPT)["input_ids"]])
    x = model.read_sites(ids, torch.ones_like(ids), [SITE])[SITE][0, -1]
    max_act = float(sae.encode(x).max())

    def edit(h):
        h = h.clone()
        h[:, -1] += amp * max_act * sae.W_dec[feature]
        return h

    probs = torch.softmax(model.forward_with_edits(ids, None, {SITE: edit}).logits[0, -1], -1)
    order = probs.argsort(descending=True)
    ranks = [int((order == t).nonzero()) for t in lens[feature].tolist()]
    return (1 - min(ranks) / probs.numel()) * float(probs[lens[feature]].max())


def test_output_scores_follow_the_definition_and_do_not_depend_on_batching(model, sae):
    lens = logit_lens_tokens(model, sae)
    one = output_scores(model, sae, features=list(range(6)), lens=lens, batch_size=1)
    many = output_scores(model, sae, lens=lens, batch_size=13)
    assert torch.allclose(one.scores, many.scores[:6], atol=1e-6)
    for feature in (0, 17):
        assert math.isclose(float(many.scores[feature]), _manual_output_score(model, sae, feature, lens),
                            rel_tol=1e-4, abs_tol=1e-6)
    assert ((many.scores >= 0) & (many.scores <= 1)).all()
    # features that write a token's own direction are the ones that make the model say it
    ranking = many.scores.argsort(descending=True).tolist()
    assert set(ranking[:len(TOKENS)]) == set(range(len(TOKENS)))
    assert (many.best_rank[: len(TOKENS)] == 0).all()
    subset = output_scores(model, sae, features=[3, 1], lens=lens)
    assert torch.allclose(subset.scores, many.scores[[3, 1]], atol=1e-6)
    with pytest.raises(WorkbenchError, match="0..31"):
        output_scores(model, sae, features=[40], lens=lens)


def test_input_scores_count_top_examples_whose_peak_token_is_a_lens_token():
    lens = torch.tensor([[5, 6], [7, 8], [9, 10]])
    values = torch.tensor([[3.0, 2.0, 1.0, 0.5], [2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    tokens = torch.tensor([[5, 1, 6, 2], [7, 7, 8, 8], [1, 2, 3, 4]])
    examples = TopExamples(values=values, tokens=tokens, n_contexts=4)
    scores = input_scores_from_examples(examples, lens, min_examples=2)
    assert scores[0] == 0.5   # 2 of 4 active examples peak on a lens token
    assert scores[1] == 1.0   # the two inactive examples (value 0) do not count
    assert scores[2] == 0.0
    assert torch.isnan(input_scores_from_examples(examples, lens, min_examples=3)[1])


def test_top_examples_keep_each_features_highest_contexts(model, sae):
    examples = top_examples(model, sae, "jargon", max_tokens=512, context_size=32, n_examples=4, batch_size=4)
    assert examples.values.shape == examples.tokens.shape == (sae.cfg.d_sae, 4)
    assert examples.n_contexts == 16
    finite = examples.values[torch.isfinite(examples.values).all(1)]
    assert (finite[:, :-1] >= finite[:, 1:]).all()  # descending per feature
    assert (examples.tokens[examples.values > 0] >= 0).all()


def test_scores_are_stored_and_read_back(tmp_path):
    store = tmp_path / "features" / "tiny-llama" / "x.sqlite"
    written = write_scores(store, {"output_score": torch.arange(4.0)}, d_sae=4, metadata={"prompt": "p"})
    assert sidecar_path(store).is_file() and "output_score" in written
    write_scores(store, {"input_score": torch.tensor([0.1, float("nan"), 0.3, 0.4])}, d_sae=4)
    scores = read_scores(store, d_sae=4)
    assert set(scores) == {"input_score", "output_score"}  # the second write kept the first
    assert torch.equal(scores["output_score"], torch.arange(4.0))
    assert torch.isnan(scores["input_score"][1])
    assert read_scores(store, d_sae=8) == {}  # scores for another SAE size are not offered
    with pytest.raises(WorkbenchError, match="unknown score"):
        write_scores(store, {"fancy_score": torch.zeros(4)})
    with pytest.raises(WorkbenchError, match="has 3 values"):
        write_scores(store, {"input_score": torch.zeros(3)}, d_sae=4)


def test_scores_go_into_a_harvested_feature_store(tmp_path, model, sae):
    from workbench.features.harvest import HarvestConfig, harvest
    from workbench.features.store import FeatureStore

    store_path = tmp_path / "tiny.sqlite"
    config = HarvestConfig(corpus="jargon", split="all", n_tokens=2048, context_size=32, batch_size=8, umap=False)
    harvest(model, sae, store_path, config, sae_name="tiny")
    lens = logit_lens_tokens(model, sae)
    with FeatureStore(store_path) as store:
        examples = top_examples_from_store(store, n_examples=config.n_top)
        card = store.card(0)
    top = card.examples_of("top")
    assert examples.values[0, 0] == top[0].value and examples.tokens[0, 0] == top[0].token_ids[top[0].peak]
    scores = input_scores_from_examples(examples, lens, min_examples=2)
    finite = scores[~torch.isnan(scores)]
    assert finite.numel() > 0 and ((finite >= 0) & (finite <= 1)).all()
    output = output_scores(model, sae, lens=lens).scores
    write_scores(store_path, {"input_score": scores, "output_score": output}, d_sae=sae.cfg.d_sae)
    with FeatureStore(store_path) as store:
        assert store.has_scores() == {"input_score": True, "output_score": True}
        assert torch.allclose(torch.from_numpy(store.scores("output_score")).float(), output)
        ranked = store.list_features("output_score", limit=3)
    assert [row["feature"] for row in ranked] == output.argsort(descending=True)[:3].tolist()
    assert torch.allclose(read_scores(store_path, sae.cfg.d_sae)["output_score"], output)
