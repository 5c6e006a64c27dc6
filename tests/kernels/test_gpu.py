"""The kernel checks at real shapes on a GPU (run on the H200: `pytest -m gpu tests/kernels`).

Same comparisons as the CPU interpreter tests (outputs and all gradients against the
reference, selection validity, opcheck), at the benchmark's shapes: d_sae 131072, d_in
4096, k 64, N 4096, bf16; the encoder at d_in 2304, d_sae 65536 with AuxK; AuxK's decode
(1152 slots over the dead latents) through the dense route. Before each Triton call the
CUDA caching allocator is filled with NaN, so an output element a kernel forgot to write
shows up as non-finite.

`bench/gpu_kernels.sh` runs this file with WORKBENCH_KERNELS_TUNE=0 (first launch config
of each kernel, quick to compile); `test_tuned_candidates_agree` turns tuning on for the
two decode shapes that matter most, so every candidate config is compiled, run and
cross-checked on the GPU. The newest code paths (direct launch, fast top-k routes) are
probed first, on their own, by test_gpu_features.py.
"""

from __future__ import annotations

import pytest
import torch

from workbench.kernels import batch_topk_indices, packed_decoders, sparse_decode, topk_encode, use
from workbench.kernels.decode import op as decode_op
from workbench.kernels.decode import reference as decode_reference
from workbench.kernels.encode import op as encode_op
from workbench.kernels.encode import reference as encode_reference

from kernel_checks import RTOL, assert_close, assert_valid_topk, noncontiguous

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")
# Shapes, module constants so that a CPU smoke run of this file (under the interpreter,
# with CUDA pointed at the CPU) can shrink them; on the GPU they are the real ones.
DECODE = dict(n_rows=4096, k=64, n_latents=131072, width=4096)
AUTOCAST = dict(n_latents=65536, width=2304, k=64, rows=(1, 7, 64, 4096))
ENCODE = dict(n_rows=4096, d_in=2304, n_latents=65536, k=64, k_aux=1152)
BATCH = dict(n_rows=4096, n_latents=65536, k=64)
AUX = dict(n_rows=4096, n_latents=65536, width=2304, k=1152, dead_fraction=0.2)
SMALL_ENCODE = dict(d_in=576, n_latents=16384, k=32, rows=(1, 100, 1000))
POISON_BYTES = 3 << 30


def poison_allocator() -> None:
    """Leave NaN in the caching allocator's free blocks: unwritten outputs read as NaN."""
    block = torch.full((POISON_BYTES // 4,), float("nan"), device=CUDA)
    del block


def _indices(n_rows, k, n_latents, kind, generator):
    if kind == "skewed":  # 4 latents named by every row, the rest from 64 with repeats
        hot = torch.arange(4, device=CUDA).expand(n_rows, 4)
        rest = torch.randint(0, 64, (n_rows, k - 4), device=CUDA, generator=generator)
        return torch.cat([hot, rest], dim=1)
    keys = torch.rand(n_rows, n_latents, device=CUDA, generator=generator)
    idx = keys.topk(k, dim=1).indices  # unique per row, like a TopK
    return idx.sort(dim=1).values if kind == "sorted" else idx


def _decode_both(acts, idx, W, b, grad_y):
    out = {}
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (acts, W, b) if t is not None]
        if backend == "triton":
            poison_allocator()
        with use(backend):
            y = sparse_decode(leaves[0], idx, leaves[1], leaves[2] if b is not None else None)
        y.backward(grad_y)
        out[backend] = (y.detach(), *[leaf.grad for leaf in leaves])
        del y, leaves
    return out["triton"], out["reference"]


@pytest.mark.parametrize("kind", ["sorted", "unique", "skewed"])
def test_decode_real_shape_bf16(kind):
    generator = torch.Generator(device=CUDA).manual_seed(0)
    n_rows, k, n_latents, width = DECODE["n_rows"], DECODE["k"], DECODE["n_latents"], DECODE["width"]
    acts = torch.rand(n_rows, k, device=CUDA, generator=generator).to(torch.bfloat16)
    idx = _indices(n_rows, k, n_latents, kind, generator)
    W = torch.randn(n_latents, width, device=CUDA, generator=generator).to(torch.bfloat16) / 64
    b = torch.randn(width, device=CUDA, generator=generator).to(torch.bfloat16)
    grad_y = torch.randn(n_rows, width, device=CUDA, generator=generator).to(torch.bfloat16)
    got, want = _decode_both(acts, idx, W, b, grad_y)
    for g, w, name in zip(got, want, ("y", "d acts", "d W_dec", "d b_dec")):
        assert_close(g, w, f"{kind}: {name}")


def test_decode_autocast_layout_and_small_batches():
    # fp32 weights with bf16 codes (the layout under autocast), N = 1, 7, 64, strided inputs.
    generator = torch.Generator(device=CUDA).manual_seed(1)
    n_latents, width, k = AUTOCAST["n_latents"], AUTOCAST["width"], AUTOCAST["k"]
    W = torch.randn(n_latents, width, device=CUDA, generator=generator) / 48
    b = torch.randn(width, device=CUDA, generator=generator)
    for n_rows in AUTOCAST["rows"]:
        acts = torch.rand(n_rows, k, device=CUDA, generator=generator).to(torch.bfloat16)
        idx = _indices(n_rows, k, n_latents, "sorted", generator)
        grad_y = torch.randn(n_rows, width, device=CUDA, generator=generator).to(torch.bfloat16)
        if n_rows == 64:
            acts, idx, grad_y = noncontiguous(acts), noncontiguous(idx), noncontiguous(grad_y)
        got, want = _decode_both(acts, idx, W, b, grad_y)
        # d acts uses the weights rounded to bf16 (documented; autocast does the same).
        want = (want[0], decode_reference.gather_dot(grad_y, idx, W.to(torch.bfloat16)).to(torch.bfloat16), *want[2:])
        for g, w, name in zip(got, want, ("y", "d acts", "d W_dec", "d b_dec")):
            assert_close(g, w, f"N={n_rows}: {name}")
        with torch.no_grad(), use("triton"):
            assert_close(sparse_decode(acts, idx, W, b), want[0], f"N={n_rows}: no-grad path")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_topk_encode_real_shape(dtype):
    generator = torch.Generator(device=CUDA).manual_seed(2)
    n_rows, d_in, n_latents, k, k_aux = (ENCODE[key] for key in ("n_rows", "d_in", "n_latents", "k", "k_aux"))
    x = torch.randn(n_rows, d_in, device=CUDA, generator=generator).to(dtype)
    W_enc = (torch.randn(d_in, n_latents, device=CUDA, generator=generator) / 48).to(dtype)
    b_enc = (torch.randn(n_latents, device=CUDA, generator=generator) / 10).to(dtype)
    dead = torch.rand(n_latents, device=CUDA, generator=generator) < 0.2
    poison_allocator()
    with use("triton"):
        vals, idx, aux_vals, aux_idx = topk_encode(x, W_enc, b_enc, k, dead_mask=dead, k_aux=k_aux)
    pre = torch.addmm(b_enc, x, W_enc)  # what the Triton path selects from (cuBLAS, same dtype)
    assert_valid_topk(pre, vals, idx, k, absolute=False)
    assert_valid_topk(pre, aux_vals, aux_idx, k_aux, absolute=False, mask=dead)
    with use("reference"):
        ref_vals, _, _, _ = topk_encode(x, W_enc, b_enc, k)
    # The reference rounds an fp32-accumulated pre once; cuBLAS may differ by an ulp.
    assert_close(vals.float().sort(dim=1).values, ref_vals.float().sort(dim=1).values, "top-k values", rtol=2e-2)
    args = (torch.randn(vals.shape, device=CUDA, generator=generator).to(dtype),
            torch.randn(aux_vals.shape, device=CUDA, generator=generator).to(dtype),
            vals, idx, aux_vals, aux_idx, dead, False)
    from workbench.kernels.encode import triton as encode_kernels

    poison_allocator()
    table = encode_kernels.encoder_table(W_enc, dtype)  # what the forward hands to the backward
    got = encode_kernels.encode_backward(encode_reference.slot_gradient_parts(*args), x, W_enc, table)
    want = encode_reference.encode_backward(*encode_reference.slot_gradients(*args), x, W_enc)
    # dx sums k + k_aux = 1216 products per element and dW_enc 4096, with cancellation: fp32
    # summation-order noise then reaches ~1e-4 of an element (the H200 run saw 4e-4 relative on
    # 450 of 9.4M dx elements near zero), above the 2e-5 that short fp32 sums meet.
    rtol = 1e-4 if dtype == torch.float32 else None
    for a, b, name in zip(got, want, ("dx", "dW_enc", "db_enc")):
        assert_close(a, b, f"{dtype}: {name}", rtol=rtol)


def test_topk_encode_abs_and_small_batches_end_to_end():
    generator = torch.Generator(device=CUDA).manual_seed(3)
    d_in, n_latents, k = SMALL_ENCODE["d_in"], SMALL_ENCODE["n_latents"], SMALL_ENCODE["k"]
    for n_rows in SMALL_ENCODE["rows"]:  # below and above the kernel's row threshold
        x = torch.randn(n_rows, d_in, device=CUDA, generator=generator)
        W_enc = torch.randn(n_latents, d_in, device=CUDA, generator=generator).t() / 24  # [d_sae, d_in] storage
        b_enc = torch.randn(n_latents, device=CUDA, generator=generator) / 10
        grad = torch.randn(n_rows, k, device=CUDA, generator=generator)
        results = {}
        for backend in ("triton", "reference"):
            leaves = [t.detach().clone().requires_grad_() for t in (x, W_enc, b_enc)]
            with use(backend):
                vals, idx, _, _ = topk_encode(*leaves, k, absolute=True)
            vals.backward(grad)
            results[backend] = (vals.detach(), idx, [leaf.grad for leaf in leaves])
        assert torch.equal(results["triton"][1], results["reference"][1]), f"N={n_rows}: selection"
        assert_close(results["triton"][0], results["reference"][0], f"N={n_rows}: vals")
        for a, b, name in zip(results["triton"][2], results["reference"][2], ("dx", "dW_enc", "db_enc")):
            assert_close(a, b, f"N={n_rows}: {name}")


def test_opcheck_on_cuda():
    generator = torch.Generator(device=CUDA).manual_seed(4)
    acts = torch.rand(33, 8, device=CUDA, generator=generator, requires_grad=True)
    idx = _indices(33, 8, 300, "unique", generator)
    W = torch.randn(300, 130, device=CUDA, generator=generator, requires_grad=True)
    b = torch.randn(130, device=CUDA, generator=generator, requires_grad=True)
    results = torch.library.opcheck(decode_op.sparse_decode_op, (acts, idx, W, b))
    assert set(results.values()) == {"SUCCESS"}, results
    x = torch.randn(200, 96, device=CUDA, generator=generator, requires_grad=True)
    W_enc = torch.randn(96, 500, device=CUDA, generator=generator, requires_grad=True)
    b_enc = torch.randn(500, device=CUDA, generator=generator, requires_grad=True)
    dead = torch.rand(500, device=CUDA, generator=generator) < 0.3
    results = torch.library.opcheck(encode_op.topk_encode_op, (x, W_enc, b_enc, 16, dead, 8, False))
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_batch_topk_real_shape(dtype):
    generator = torch.Generator(device=CUDA).manual_seed(5)
    n_rows, n_latents, k = BATCH["n_rows"], BATCH["n_latents"], BATCH["k"]
    values = torch.randn(n_rows, n_latents, device=CUDA, generator=generator).relu().to(dtype)
    n = k * n_rows
    poison_allocator()
    with use("triton"):
        idx = batch_topk_indices(values, n)
    flat = values.reshape(-1)
    assert idx.shape == (n,) and bool((idx.diff() > 0).all())
    kth = flat.float().topk(n).values[-1]
    assert bool((flat[idx].float() >= kth).all())
    assert int((flat[idx].float() > kth).sum()) == int((flat.float() > kth).sum())


def test_aux_decode_dense_route_real_shape():
    # AuxK's decode in training: fp32 W_dec, bf16 codes, 1152 slots per token among ~13k dead.
    from workbench.kernels.decode import dense

    generator = torch.Generator(device=CUDA).manual_seed(6)
    n_rows, n_latents, width, k = AUX["n_rows"], AUX["n_latents"], AUX["width"], AUX["k"]
    dead = torch.nonzero(torch.rand(n_latents, device=CUDA, generator=generator) < AUX["dead_fraction"]).squeeze(1)
    k = min(k, dead.numel())
    keys = torch.rand(n_rows, dead.numel(), device=CUDA, generator=generator)
    idx = dead[keys.topk(k, dim=1).indices].sort(dim=1).values
    del keys
    acts = torch.rand(n_rows, k, device=CUDA, generator=generator).to(torch.bfloat16)
    W = torch.randn(n_latents, width, device=CUDA, generator=generator) / 48
    assert dense.choose(idx, n_latents, width, acts.dtype, W.element_size()) is not None, "expected the dense route here"
    grad_y = torch.randn(n_rows, width, device=CUDA, generator=generator).to(torch.bfloat16)
    got, want = _decode_both(acts, idx, W, None, grad_y)
    # d acts: the dense route rounds the fp32 weights to bf16 for the dots, as the kernels do.
    want = (want[0], decode_reference.gather_dot(grad_y, idx, W.to(torch.bfloat16)).to(torch.bfloat16), want[2])
    # d W_dec is an fp32 sum of ~360 bf16 products per element on the tensor cores, whose fp32
    # accumulation is not IEEE-exact on Hopper: 2.5e-5 off at scale 60 was seen on the H200,
    # so its bound is 1e-4 (still 1000x below the error of a dropped or doubled pair).
    for g, w, name in zip(got[:3], want, ("y", "d acts", "d W_dec")):
        assert_close(g, w, f"aux dense route: {name}", rtol=1e-4 if name == "d W_dec" else None)


def test_tuned_candidates_agree(monkeypatch):
    # Tuning on: every candidate of the goal-shape gather and of the one-token gather is
    # compiled, run and compared with the first; none may disagree.
    from workbench.kernels.decode import triton as decode_kernels

    monkeypatch.setenv("WORKBENCH_KERNELS_TUNE", "1")
    generator = torch.Generator(device=CUDA).manual_seed(7)
    n_rows, k, n_latents, width = DECODE["n_rows"], DECODE["k"], DECODE["n_latents"], DECODE["width"]
    W = (torch.randn(n_latents, width, device=CUDA, generator=generator) / 64).to(torch.bfloat16)
    for rows, tuner in ((n_rows, decode_kernels.GATHER_TILES_LARGE), (1, decode_kernels.GATHER_SLOTS)):
        tuner.chosen.clear()
        tuner.rejected.clear()
        acts = torch.rand(rows, k, device=CUDA, generator=generator).to(torch.bfloat16)
        idx = _indices(rows, k, n_latents, "sorted", generator)
        want = decode_reference.decode_forward(acts, idx, W, None)
        with torch.no_grad(), use("triton"):
            for _ in range(3):  # first call tunes; later ones use the choice (N=1: the direct launch)
                got = sparse_decode(acts, idx, W)
                assert_close(got, want, f"N={rows} tuned")
        assert not tuner.rejected, f"{tuner.name}: configs disagreeing with the first: {tuner.rejected}"
        assert tuner.chosen, f"{tuner.name}: nothing was tuned"


def test_packed_decoder_real_shape(monkeypatch):
    # Inside packed_decoders() the goal-shape no-grad decode reads the packed copy (every
    # candidate config tuned and cross-checked), and a change of W in place is never served
    # from the old copy.
    from workbench.kernels.decode import packed
    from workbench.kernels.decode import triton as decode_kernels

    monkeypatch.setenv("WORKBENCH_KERNELS_TUNE", "1")
    generator = torch.Generator(device=CUDA).manual_seed(11)
    n_rows, k, n_latents, width = DECODE["n_rows"], DECODE["k"], DECODE["n_latents"], DECODE["width"]
    W = (torch.randn(n_latents, width, device=CUDA, generator=generator) / 64).to(torch.bfloat16)
    b = torch.randn(width, device=CUDA, generator=generator).to(torch.bfloat16)
    acts = torch.rand(n_rows, k, device=CUDA, generator=generator).to(torch.bfloat16)
    idx = _indices(n_rows, k, n_latents, "unique", generator)
    decode_kernels.GATHER_TILES_PACKED.chosen.clear()
    decode_kernels.GATHER_TILES_PACKED.rejected.clear()
    with torch.no_grad(), use("triton"), packed_decoders():
        for scale in (1.0, 0.5):
            if scale != 1.0:
                W.mul_(scale)
            want = decode_reference.decode_forward(acts, idx, W, b)
            poison_allocator()
            assert_close(sparse_decode(acts, idx, W, b), want, f"packed, W x {scale}")
            assert getattr(W, packed._ATTRIBUTE)[0][-1] == W._version  # the copy of this version
    assert not hasattr(W, packed._ATTRIBUTE)
    assert decode_kernels.GATHER_TILES_PACKED.chosen and not decode_kernels.GATHER_TILES_PACKED.rejected


def test_ragged_decode_real_shape():
    # BatchTopK codes (k per token on average, rows uneven) at the training-step shape, fp32
    # weights under bf16 autocast, through the kernel route (codes padded to the longest row),
    # against fp32 products of the same values: outputs and all gradients. (The kernels read
    # fp32 W exactly, except d vals, which uses W rounded to bf16 as autocast would.)
    from workbench.sae.batchtopk import batch_topk_entries
    from workbench.sae.sparse_ops import kernel_ragged_decode

    generator = torch.Generator(device=CUDA).manual_seed(5)
    n_rows, n_latents, width, k = AUX["n_rows"], AUX["n_latents"], AUX["width"], 64
    pre = torch.randn(n_rows, n_latents, device=CUDA, generator=generator).to(torch.bfloat16)
    rows, cols, vals = batch_topk_entries(pre, k)
    del pre
    W = torch.randn(n_latents, width, device=CUDA, generator=generator) / 48
    b = torch.randn(width, device=CUDA, generator=generator)
    grad_y = torch.randn(n_rows, width, device=CUDA, generator=generator).to(torch.bfloat16)
    leaves = [vals.detach().clone().requires_grad_(), W.clone().requires_grad_(), b.clone().requires_grad_()]
    poison_allocator()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = kernel_ragged_decode(rows, cols, leaves[0], n_rows, leaves[1], leaves[2])
    y.backward(grad_y)
    codes = torch.zeros(n_rows, n_latents, device=CUDA).index_put((rows, cols), vals.float())
    g = grad_y.float()
    want = {
        "y": (codes @ W + b).to(torch.bfloat16),
        "d vals": (g @ W.to(torch.bfloat16).float().T)[rows, cols].to(torch.bfloat16),
        "d W_dec": codes.T @ g,
        "d b_dec": g.sum(0),
    }
    got = {"y": y.detach(), "d vals": leaves[0].grad, "d W_dec": leaves[1].grad, "d b_dec": leaves[2].grad}
    for name, value in want.items():
        assert_close(got[name].float(), value.float(), f"ragged: {name}", rtol=RTOL[torch.bfloat16])


def test_batchtopk_candidate_route_real_shape():
    # A BatchTopK training step at the kernels' training shape (fp32 parameters, bf16
    # autocast, AuxK on) through the GPU route (each token's 4k best from topk_encode, ragged
    # decode by the kernels) against the dense route: the same selection, loss and gradients
    # to bf16 precision (the dense route rounds W_dec to bf16 in its matmuls).
    from workbench.sae import SaeConfig, create_sae
    from workbench.sae import batchtopk
    from workbench.sae.sparse_ops import dense_ragged

    answers = []
    real = batchtopk.batch_topk_from_candidates
    torch.manual_seed(0)
    x = torch.randn(4096, 2304, device=CUDA)
    dead = torch.arange(65536, device=CUDA) % 5 == 0
    results = []
    for route in ("candidates", "dense"):
        sae = create_sae(SaeConfig("batchtopk", 2304, 65536, k=64), device=CUDA, seed=0)
        sae.initialize_from_data(x)
        context = dense_ragged() if route == "dense" else torch.autocast("cuda", enabled=False)
        with context, torch.autocast("cuda", dtype=torch.bfloat16):
            batchtopk.batch_topk_from_candidates = lambda *a: answers.append(real(*a)) or answers[-1]
            try:
                out = sae.training_step(x, dead_mask=dead)
            finally:
                batchtopk.batch_topk_from_candidates = real
        out.loss.backward()
        results.append((out, {n: p.grad.float() for n, p in sae.named_parameters() if p.grad is not None}))
        del sae
    (cand, cand_grads), (dense, dense_grads) = results
    assert len(answers) == 1 and answers[0] is not None  # the candidate route ran, without falling back
    assert torch.equal(cand.fired, dense.fired)  # the same latents selected
    assert_close(cand.loss.float().reshape(1), dense.loss.float().reshape(1), "loss", rtol=RTOL[torch.bfloat16])
    # Whole-tensor relative errors: the two routes round different products to bf16 (single
    # elements of x_hat near zero differ by a few bf16 steps of the largest ones).
    tensors = {"x_hat": (cand.x_hat.float(), dense.x_hat.float())}
    tensors.update({f"d {name}": (cand_grads[name], dense_grads[name]) for name in dense_grads})
    for name, (got, want) in tensors.items():
        error = float((got - want).norm() / want.norm().clamp_min(1e-30))
        assert error < 2e-2, f"{name}: relative error {error:.3g}"
    assert cand_grads.keys() == dense_grads.keys()


def test_selection_matches_a_plain_autocast_topk():
    # workbench.sae checks the kernel against its own torch version on first use (b_enc = 0
    # at initialisation) and drops the kernel if any selected latent differs: the fast
    # path's GEMM must therefore round exactly like `x @ W_enc + b_enc` under autocast.
    generator = torch.Generator(device=CUDA).manual_seed(8)
    n_rows, d_in, n_latents, k = (ENCODE[key] for key in ("n_rows", "d_in", "n_latents", "k"))
    x = torch.randn(n_rows, d_in, device=CUDA, generator=generator)
    W_enc = torch.randn(d_in, n_latents, device=CUDA, generator=generator) / d_in**0.5
    b_enc = torch.zeros(n_latents, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16), use("triton"):
        vals, idx, _, _ = topk_encode(x, W_enc, b_enc, k)
        plain_vals, plain_idx = (x @ W_enc + b_enc).topk(k, dim=1)
    assert torch.equal(idx, plain_idx.sort(dim=1).values), "selection differs from x @ W_enc + b_enc under autocast"
    assert torch.equal(vals.float(), plain_vals.relu().gather(1, plain_idx.sort(dim=1).indices).float())


def test_row_upkeep_real_shape():
    """The trainer's decoder-row upkeep at the training shape (fp32 [65536, 2304]), tuned."""
    from workbench.kernels import normalize_rows_, remove_parallel_component_
    from workbench.kernels.rows import reference as rows_reference

    generator = torch.Generator(device=CUDA).manual_seed(21)
    shape = (ENCODE["n_latents"], ENCODE["d_in"])
    weight = torch.randn(shape, device=CUDA, generator=generator)
    weight /= weight.norm(dim=1, keepdim=True)
    grad = torch.randn(shape, device=CUDA, generator=generator)
    want = rows_reference.remove_parallel_component_(grad.clone(), weight)
    with use("triton"):
        got = remove_parallel_component_(grad.clone(), weight)
        scaled = weight * torch.rand(shape[0], 1, device=CUDA, generator=generator).add(0.5)
        normalize_rows_(scaled)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled, weight, rtol=1e-5, atol=1e-6)
