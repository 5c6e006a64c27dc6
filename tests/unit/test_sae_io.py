"""SAE files: SAELens v6 round trips, hand-written SAELens / sparsify / dictionary_learning
folders, and damaged or foreign files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from workbench.errors import CorruptFileError, WorkbenchError
from workbench.sae import ARCHITECTURE_NAMES, SaeConfig, create_sae
from workbench.sae.io import CFG_FILENAME, WEIGHTS_FILENAME, expected_tensor_shapes, save_sae
from workbench.sae.loading import load_sae

D_IN, D_SAE = 12, 40


def trained_like(arch: str, *, transcoder: bool = False, seed: int = 0):
    """A dictionary with non-trivial biases and thresholds (as after training)."""
    k = None if arch in ("relu", "jumprelu") else 5
    cfg = SaeConfig(arch, D_IN, D_SAE, k=k, transcoder=transcoder, d_out=9 if transcoder else None,
                    site="blocks.1.hook_resid_post", site_out="blocks.1.hook_mlp_out" if transcoder else "",
                    model_name="tiny-llama", context_size=32)
    sae = create_sae(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=gen) * 0.3)
        if sae.has_encoder:
            sae.b_enc.copy_(torch.randn(D_SAE, generator=gen) * 0.1)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=gen) * 0.5)
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.25)
            sae.threshold_updates.fill_(10)
    return sae.eval()


@pytest.fixture
def x():
    return torch.randn(50, D_IN, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("arch", ARCHITECTURE_NAMES)
def test_round_trip_every_architecture(arch, x, tmp_path):
    sae = trained_like(arch)
    save_sae(sae, tmp_path / arch)
    loaded = load_sae(tmp_path / arch)
    assert type(loaded) is type(sae)
    assert loaded.cfg == sae.cfg
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded(x), sae(x))


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "abstopk", "batchtopk"])
def test_round_trip_transcoders(arch, x, tmp_path):
    sae = trained_like(arch, transcoder=True)
    save_sae(sae, tmp_path / "tc")
    loaded = load_sae(tmp_path / "tc")
    assert loaded.cfg.transcoder and loaded.cfg.d_out == 9 and loaded.cfg.site_out == "blocks.1.hook_mlp_out"
    assert torch.equal(loaded(x), sae(x))


def test_fp16_files_load_as_the_rounded_weights(x, tmp_path):
    sae = trained_like("topk")
    save_sae(sae, tmp_path / "half", dtype="float16")
    cfg = json.loads((tmp_path / "half" / CFG_FILENAME).read_text())
    assert cfg["dtype"] == "float16"
    loaded = load_sae(tmp_path / "half")
    assert loaded.W_dec.dtype == torch.float32
    assert torch.equal(loaded.W_dec, sae.W_dec.half().float())
    kept = load_sae(tmp_path / "half", dtype=None)
    assert kept.W_enc.dtype == torch.float16


# SAELens' own tensor names for each of its architectures (sae_lens/saes/*.py, v6).
SAELENS_KEYS = {
    "standard": {"W_enc", "W_dec", "b_enc", "b_dec"},
    "topk": {"W_enc", "W_dec", "b_enc", "b_dec"},
    "jumprelu": {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"},
    "matching_pursuit": {"W_dec", "b_dec"},
    "transcoder": {"W_enc", "W_dec", "b_enc", "b_dec"},
}
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "hierarchical_topk": "topk", "batchtopk": "jumprelu",
                "matryoshka": "jumprelu", "jumprelu": "jumprelu", "mp": "matching_pursuit", "abstopk": "abstopk"}


@pytest.mark.parametrize("arch", ARCHITECTURE_NAMES)
def test_files_follow_the_saelens_contract(arch, tmp_path):
    """What SAELens' loader reads: the architecture name, its fields, exactly its tensors."""
    save_sae(trained_like(arch), tmp_path)
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    assert cfg["architecture"] == SAELENS_ARCH[arch]
    for key in ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                "reshape_activations", "metadata"):
        assert key in cfg
    assert cfg["normalize_activations"] == "none"
    meta = cfg["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_resid_post" and meta["model_name"] == "tiny-llama"
    assert meta["workbench_architecture"] == arch
    from safetensors import safe_open

    with safe_open(str(tmp_path / WEIGHTS_FILENAME), "pt") as handle:
        keys = set(handle.keys())
    if cfg["architecture"] in SAELENS_KEYS:
        assert keys == SAELENS_KEYS[cfg["architecture"]]
    if cfg["architecture"] == "topk":
        assert cfg["k"] == 5 and cfg["rescale_acts_by_decoder_norm"] is False


def _write_saelens_folder(folder, cfg: dict, tensors: dict):
    folder.mkdir(parents=True)
    (folder / CFG_FILENAME).write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILENAME))


def _saelens_cfg(architecture: str, **fields):
    # The exact field set SAELens v6's SAEConfig.to_dict() writes.
    return {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0",
                         "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "hook_head_index": None,
                         "prepend_bos": True, "dataset_path": "monology/pile", "context_size": 128,
                         "neuronpedia_id": None, "seqpos_slice": [None], "model_from_pretrained_kwargs": {}},
            "architecture": architecture, **fields}


def _random_weights(seed=0, threshold=False):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 0.3,
         "b_enc": torch.randn(D_SAE, generator=g) * 0.1, "b_dec": torch.randn(D_IN, generator=g)}
    if threshold:
        w["threshold"] = torch.rand(D_SAE, generator=g)
    return w


def test_hand_written_saelens_topk_folder_loads_and_matches(x, tmp_path):
    w = _random_weights()
    _write_saelens_folder(tmp_path / "sl", _saelens_cfg("topk", k=6, rescale_acts_by_decoder_norm=False), w)
    sae = load_sae(tmp_path / "sl")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 6 and sae.cfg.site == "blocks.3.hook_resid_pre"
    # SAELens TopKSAE: topk of pre, ReLU, scatter; decode z @ W_dec + b_dec
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    vals, idx = pre.topk(6, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    assert torch.allclose(sae.encode(x), z, atol=1e-5)
    assert torch.allclose(sae(x), z @ w["W_dec"] + w["b_dec"], atol=1e-5)


def test_hand_written_saelens_jumprelu_and_standard_folders(x, tmp_path):
    w = _random_weights(1, threshold=True)
    _write_saelens_folder(tmp_path / "j", _saelens_cfg("jumprelu"), w)
    sae = load_sae(tmp_path / "j")
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    z = pre.relu() * (pre > w["threshold"].relu())
    assert torch.allclose(sae(x), z @ w["W_dec"] + w["b_dec"], atol=1e-5)

    w = _random_weights(2)
    _write_saelens_folder(tmp_path / "s", _saelens_cfg("standard"), w)
    sae = load_sae(tmp_path / "s")
    z = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()
    assert sae.cfg.architecture == "relu"
    assert torch.allclose(sae(x), z @ w["W_dec"] + w["b_dec"], atol=1e-5)


def test_hand_written_saelens_transcoder(x, tmp_path):
    w = _random_weights(3)
    w["W_dec"], w["b_dec"] = torch.randn(D_SAE, 7), torch.randn(7)
    cfg = _saelens_cfg("transcoder", d_out=7)
    cfg["apply_b_dec_to_input"] = False
    _write_saelens_folder(tmp_path / "t", cfg, w)
    sae = load_sae(tmp_path / "t")
    assert sae.cfg.transcoder and sae.cfg.d_out == 7
    z = (x @ w["W_enc"] + w["b_enc"]).relu()
    assert torch.allclose(sae(x), z @ w["W_dec"] + w["b_dec"], atol=1e-5)


# ----------------------------------------------------------------- importers
def test_sparsify_folder(x, tmp_path):
    g = torch.Generator().manual_seed(4)
    enc_w, enc_b = torch.randn(D_SAE, D_IN, generator=g), torch.randn(D_SAE, generator=g) * 0.1
    W_dec, b_dec = torch.randn(D_SAE, D_IN, generator=g), torch.randn(D_IN, generator=g)
    folder = tmp_path / "run" / "layers.3"
    folder.mkdir(parents=True)
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
              str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE,
        "k": 7, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}))
    with pytest.raises(WorkbenchError, match="layers.3"):
        load_sae(tmp_path / "run")
    sae = load_sae(tmp_path / "run", hookpoint="layers.3")
    assert sae.cfg.site == "blocks.3.hook_resid_post" and sae.cfg.k == 7
    # sparsify: ReLU(encoder(x - b_dec)) then top-k; decode + b_dec
    pre = torch.relu((x - b_dec) @ enc_w.T + enc_b)
    vals, idx = pre.topk(7, dim=-1)
    y = torch.zeros_like(pre).scatter(-1, idx, vals) @ W_dec + b_dec
    assert torch.allclose(sae(x), y, atol=1e-4)
    assert torch.allclose(load_sae(folder)(x), y, atol=1e-4)


def _dl_folder(tmp_path, state, trainer):
    folder = tmp_path / "trainer_0"
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
    return folder


def test_dictionary_learning_autoencoder_and_topk(x, tmp_path):
    g = torch.Generator().manual_seed(5)
    enc_w, enc_b = torch.randn(D_SAE, D_IN, generator=g), torch.randn(D_SAE, generator=g) * 0.1
    dec_w, bias = torch.randn(D_IN, D_SAE, generator=g), torch.randn(D_IN, generator=g)
    folder = _dl_folder(tmp_path, {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w,
                                   "bias": bias},
                        {"dict_class": "AutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE, "layer": 3,
                         "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_3"})
    sae = load_sae(folder)
    assert sae.cfg.architecture == "relu" and sae.cfg.site == "blocks.3.hook_resid_post"
    expected = torch.relu((x - bias) @ enc_w.T + enc_b) @ dec_w.T + bias
    assert torch.allclose(sae(x), expected, atol=1e-4)

    topk_dir = tmp_path / "topk"
    topk_dir.mkdir()
    torch.save({"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "b_dec": bias,
                "k": torch.tensor(5), "threshold": torch.tensor(-1.0)}, topk_dir / "ae.pt")
    sae = load_sae(topk_dir / "ae.pt", site="blocks.0.hook_resid_post")
    pre = torch.relu((x - bias) @ enc_w.T + enc_b)
    vals, idx = pre.topk(5, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, idx, vals) @ dec_w.T + bias
    assert sae.cfg.architecture == "topk"
    assert torch.allclose(sae(x), expected, atol=1e-4)


def test_dictionary_learning_jumprelu_folds_decoder_norms(x, tmp_path):
    g = torch.Generator().manual_seed(6)
    W_enc, b_enc = torch.randn(D_IN, D_SAE, generator=g), torch.randn(D_SAE, generator=g) * 0.1
    W_dec, b_dec = torch.randn(D_SAE, D_IN, generator=g) * 2, torch.randn(D_IN, generator=g)
    threshold = torch.rand(D_SAE, generator=g)
    folder = _dl_folder(tmp_path, {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec,
                                   "threshold": threshold},
                        {"dict_class": "JumpReluAutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE})
    sae = load_sae(folder, site="blocks.0.hook_resid_post")
    pre = x @ W_enc + b_enc  # dictionary_learning's JumpReLU does not centre the input
    f = torch.relu(pre * (pre > threshold)) * W_dec.norm(dim=1)
    assert torch.allclose(sae.encode(x), f, atol=1e-4)
    assert torch.allclose(sae(x), (f / W_dec.norm(dim=1)) @ W_dec + b_dec, atol=1e-4)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)


class _Evil:
    def __reduce__(self):  # would run code if unpickled
        return (print, ("unpickled!",))


def test_dictionary_learning_refuses_pickled_objects(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "ae.pt", "wb") as handle:
        pickle.dump({"encoder.weight": _Evil()}, handle)
    with pytest.raises(CorruptFileError, match="weights_only"):
        load_sae(folder)


# ----------------------------------------------------------------- bad files
def test_truncated_safetensors_is_reported(tmp_path):
    save_sae(trained_like("topk"), tmp_path / "s")
    weights = tmp_path / "s" / WEIGHTS_FILENAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_sae(tmp_path / "s")


def test_cfg_with_unknown_or_missing_keys(tmp_path):
    save_sae(trained_like("topk"), tmp_path / "s")
    path = tmp_path / "s" / CFG_FILENAME
    good = json.loads(path.read_text())

    path.write_text(json.dumps({**good, "surprise": 1}))
    with pytest.raises(WorkbenchError, match=r"unknown cfg.json keys \['surprise'\]"):
        load_sae(tmp_path / "s")

    bad = json.loads(json.dumps(good))
    bad["metadata"]["workbench"]["mystery_knob"] = 3
    path.write_text(json.dumps(bad))
    with pytest.raises(WorkbenchError, match="mystery_knob"):
        load_sae(tmp_path / "s")

    missing = {k: v for k, v in good.items() if k != "d_sae"}
    path.write_text(json.dumps(missing))
    with pytest.raises(WorkbenchError, match=r"missing the required keys \['d_sae'\]"):
        load_sae(tmp_path / "s")

    bad = json.loads(json.dumps(good))
    del bad["metadata"]["workbench"]["d_in"]
    path.write_text(json.dumps(bad))
    with pytest.raises(WorkbenchError, match=r"missing SAE config keys \['d_in'\]"):
        load_sae(tmp_path / "s")

    path.write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_sae(tmp_path / "s")


def test_weights_that_do_not_match_the_config(tmp_path):
    w = _random_weights()
    w["W_enc"] = torch.randn(D_IN + 1, D_SAE)
    _write_saelens_folder(tmp_path / "bad", _saelens_cfg("topk", k=3), w)
    with pytest.raises(WorkbenchError, match=r"W_enc has shape \(13, 40\), expected \(12, 40\)"):
        load_sae(tmp_path / "bad")
    del w["W_enc"]
    _write_saelens_folder(tmp_path / "bad2", _saelens_cfg("topk", k=3), w)
    with pytest.raises(WorkbenchError, match=r"missing \['W_enc'\]"):
        load_sae(tmp_path / "bad2")


def test_unsupported_saelens_architecture_and_not_a_folder(tmp_path):
    _write_saelens_folder(tmp_path / "g", _saelens_cfg("gated"), _random_weights())
    with pytest.raises(WorkbenchError, match="'gated' is not supported"):
        load_sae(tmp_path / "g")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkbenchError, match="holds no SAE"):
        load_sae(tmp_path / "empty")


def test_expected_shapes_cover_every_architecture():
    for arch in ARCHITECTURE_NAMES:
        sae = trained_like(arch)
        shapes = expected_tensor_shapes(sae.cfg)
        assert shapes["W_dec"] == (D_SAE, D_IN)
