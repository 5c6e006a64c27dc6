"""Steering vectors: difference-in-means, the random control, vector files, the norm unit."""

import numpy as np
import pytest
import torch

from tests.conftest import cached_model
from workbench.errors import UnknownNameError, WorkbenchError
from workbench.steering import AddVector, diff_in_means, load_vector, random_direction, save_vector, steer
from workbench.steering.vectors import typical_norm

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return cached_model("tiny-llama")


def test_diff_in_means_matches_a_manual_computation(model):
    positive, negative = ["the cat sat", "a cat ran far away"], ["the dog sat", "one dog"]

    def mean_of(texts, reduce):
        rows = []
        for text in texts:
            ids = torch.tensor([model.tokenizer(text)["input_ids"]])
            value = model.read_sites(ids, torch.ones_like(ids), [SITE])[SITE][0]
            rows.append(value[1:].mean(0) if reduce == "mean" else value[-1])
        return torch.stack(rows).mean(0)

    for reduce in ("mean", "last"):
        vector = diff_in_means(model, SITE, positive, negative, reduce=reduce)
        assert vector.shape == (model.d_model,)
        assert torch.allclose(vector, mean_of(positive, reduce) - mean_of(negative, reduce), atol=1e-5)
    with pytest.raises(WorkbenchError, match="list of positive"):
        diff_in_means(model, SITE, "the cat", negative)
    with pytest.raises(WorkbenchError, match="empty"):
        diff_in_means(model, SITE, positive, ["ok", " "])
    with pytest.raises(WorkbenchError, match="reduce"):
        diff_in_means(model, SITE, positive, negative, reduce="max")
    with pytest.raises(UnknownNameError):
        diff_in_means(model, "blocks.4.hook_resid_post", positive, negative)


def test_random_direction_has_equal_norm_and_is_seeded():
    v = torch.randn(64) * 7
    r = random_direction(v, seed=3)
    assert r.shape == v.shape and torch.isclose(r.norm(), v.norm())
    assert torch.equal(r, random_direction(v, seed=3))
    assert not torch.allclose(r, random_direction(v, seed=4))
    assert abs(float(torch.nn.functional.cosine_similarity(r, v, dim=0))) < 0.5
    assert torch.isclose(random_direction(16, norm=2.0).norm(), torch.tensor(2.0))


def test_vector_files_round_trip_and_refuse_bad_ones(tmp_path, model):
    v = torch.randn(model.d_model)
    path = save_vector(tmp_path / "v.safetensors", v)
    assert torch.equal(load_vector(path, width=model.d_model), v)
    np.save(tmp_path / "v.npy", v.numpy())
    assert torch.equal(load_vector(tmp_path / "v.npy"), v)
    with pytest.raises(WorkbenchError, match="width 64 but the site has width 32"):
        load_vector(path, width=32)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WorkbenchError, match="plain .npy"):
        load_vector(tmp_path / "obj.npy")
    from safetensors.torch import save_file

    save_file({"a": torch.ones(64), "b": torch.ones(64)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(WorkbenchError, match="pass key="):
        load_vector(tmp_path / "two.safetensors")
    assert torch.equal(load_vector(tmp_path / "two.safetensors", key="b"), torch.ones(64))
    with pytest.raises(UnknownNameError):
        load_vector(tmp_path / "two.safetensors", key="c")
    (tmp_path / "v.txt").write_text("1 2 3")
    with pytest.raises(WorkbenchError, match=".safetensors or .npy"):
        load_vector(tmp_path / "v.txt")
    with pytest.raises(WorkbenchError, match="not a file"):
        load_vector(tmp_path / "missing.npy")
    np.save(tmp_path / "m.npy", np.ones((3, 64), dtype=np.float32))
    with pytest.raises(WorkbenchError, match="one vector"):
        load_vector(tmp_path / "m.npy")


def test_a_diff_in_means_vector_steers_and_its_random_control_differs(model):
    vector = diff_in_means(model, SITE, ["cat cat cat", "the cat"], ["dog dog dog", "the dog"])
    result = steer(model, "the", [AddVector(SITE, vector, 2.0, label="cat-dog")], max_new_tokens=4,
                   keep_logits=True)
    assert result.interventions == ["cat-dog x 2 (norm)"]
    assert not torch.equal(result.baseline_logits, result.steered_logits)
    assert typical_norm(model, SITE) > 0
