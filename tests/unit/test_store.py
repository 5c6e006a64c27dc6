"""Activation store: round trip, shuffled epochs, resume, refusal, corruption."""

import json

import pytest
import torch

from workbench.corpora import load_corpus
from workbench.engine.store import ActivationStore, capture_to_store
from workbench.errors import CorruptFileError, WorkbenchError

SITES = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("jargon", max_docs=200)


def _capture(model, corpus, folder, **kw):
    args = dict(max_tokens=700, context_size=32, batch_size=4, shard_tokens=150, progress=False)
    args.update(kw)
    return capture_to_store(model, corpus, SITES, folder, **args)


def test_round_trip_matches_direct_capture(tiny_llama, corpus, tmp_path):
    from workbench.corpora import pack_corpus

    store = _capture(tiny_llama, corpus, tmp_path / "s")
    assert store.n_tokens == 700 and len(store.manifest["shards"]) > 1
    assert store.width("blocks.1.mlp.hook_post") == tiny_llama.d_mlp
    packed = pack_corpus(corpus, tiny_llama.tokenizer, 32, max_tokens=32 * 40)
    direct = tiny_llama.capture(packed, SITES, drop_bos=True, max_tokens=700)
    for site in SITES:
        assert torch.allclose(store.read(site), direct.acts[site], atol=1e-6)
    prov = store.provenance()
    assert torch.equal(prov["token"], direct.token) and torch.equal(prov["doc"], direct.doc)


def test_shuffled_epoch_covers_each_row_once(tiny_llama, corpus, tmp_path):
    store = _capture(tiny_llama, corpus, tmp_path / "s")
    rows = store.read(SITES[0])
    batches = list(store.iter_batches(SITES[0], 64, shuffle=True, seed=3, shards_in_memory=2))
    seen = torch.cat(batches)
    assert seen.shape == rows.shape
    assert not torch.equal(seen, rows)  # really shuffled
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(seen) == key(rows)
    again = torch.cat(list(store.iter_batches(SITES[0], 64, shuffle=True, seed=3, shards_in_memory=2)))
    assert torch.equal(seen, again)  # seeded
    assert all(b.shape[0] == 64 for b in store.iter_batches(SITES[0], 64, drop_last=True))


def test_resume_after_interruption_gives_the_same_store(tiny_llama, corpus, tmp_path, monkeypatch):
    import workbench.engine.store as store_module

    whole = _capture(tiny_llama, corpus, tmp_path / "whole")
    real_flush, calls = store_module._flush, []

    def crashing_flush(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while writing shard 3
        return real_flush(*args, **kwargs)

    monkeypatch.setattr(store_module, "_flush", crashing_flush)
    with pytest.raises(KeyboardInterrupt):
        _capture(tiny_llama, corpus, tmp_path / "resumed")
    monkeypatch.setattr(store_module, "_flush", real_flush)
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    resumed = _capture(tiny_llama, corpus, tmp_path / "resumed")
    assert [s["n_tokens"] for s in resumed.manifest["shards"]] == [s["n_tokens"] for s in whole.manifest["shards"]]
    for site in SITES:
        assert torch.equal(resumed.read(site), whole.read(site))


def test_existing_store_is_refused_without_overwrite(tiny_llama, corpus, tmp_path):
    _capture(tiny_llama, corpus, tmp_path / "s", max_tokens=100)
    with pytest.raises(WorkbenchError, match="--overwrite"):
        _capture(tiny_llama, corpus, tmp_path / "s", max_tokens=100)
    again = _capture(tiny_llama, corpus, tmp_path / "s", max_tokens=120, overwrite=True)
    assert again.n_tokens == 120
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(WorkbenchError, match="not an activation store"):
        _capture(tiny_llama, corpus, tmp_path / "other", max_tokens=100)


def test_corrupt_manifest_and_truncated_shard_name_the_file(tiny_llama, corpus, tmp_path):
    folder = tmp_path / "s"
    _capture(tiny_llama, corpus, folder, max_tokens=300)
    shard = folder / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:200])
    store = ActivationStore.open(folder)
    with pytest.raises(CorruptFileError, match="shard-00000"):
        store.read(SITES[0])
    (folder / "manifest.json").write_text('{"format": "workbench-activation-store", "vers')
    with pytest.raises(CorruptFileError, match="manifest.json"):
        ActivationStore.open(folder)


def test_pattern_sites_and_bad_sizes_are_refused(tiny_llama, corpus, tmp_path):
    with pytest.raises(WorkbenchError, match="attention patterns"):
        capture_to_store(tiny_llama, corpus, ["blocks.0.attn.hook_pattern"], tmp_path / "p", max_tokens=10)
    with pytest.raises(WorkbenchError, match="max_tokens"):
        capture_to_store(tiny_llama, corpus, SITES, tmp_path / "q", max_tokens=0)
