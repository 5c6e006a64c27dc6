"""Probes of the newest GPU code paths, run on their own before the rest (bench/gpu_kernels.sh).

If one of these fails, the script turns the feature off (WORKBENCH_KERNELS_TOPK=torch,
WORKBENCH_KERNELS_DIRECT=0) for the test suite and the benchmarks that follow, so a fault
in it cannot take the rest of the run down with it:
- the fast top-k routes (two-stage chunked, bound-and-collect filter with its Triton
  kernel) at the encoder's real shape, against torch.topk;
- the direct launch of the one-token decode kernel (workbench.kernels.launch).
"""

from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels import sparse_decode, use
from workbench.kernels.decode import reference as decode_reference
from workbench.kernels.tuning import force_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")
# Module constants so that a CPU smoke run (interpreter, CUDA pointed at the CPU) can shrink them.
SELECT = dict(n_rows=4096, width=65536, k=64)
DECODE = dict(n_latents=131072, width=4096, k=64)


@pytest.mark.parametrize("route", [("chunked", 1024), ("chunked", 4096), ("filter", 256)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_fast_topk_routes_on_the_gpu(route, dtype):
    from workbench.kernels.encode import select

    generator = torch.Generator(device=CUDA).manual_seed(9)
    n_rows, width, k = SELECT["n_rows"], SELECT["width"], SELECT["k"]
    pre = torch.randn(n_rows, width, device=CUDA, generator=generator).to(dtype)
    with force_config("topk_route", {"route": route}):
        select._routes.clear()
        vals, idx = select.select_topk(pre, k, absolute=False)
    select._routes.clear()
    if route[0] == "filter":
        assert select._filtered_topk(pre, k, route[1]) is not None, "the filter route fell back on plain data"
    want = pre.topk(k, dim=1).values
    assert idx.shape == (n_rows, k) and bool((idx.diff(dim=1) > 0).all())
    assert torch.equal(vals.float().sort(dim=1).values, want.float().clamp_min(0).sort(dim=1).values)
    assert torch.equal(pre.gather(1, idx).clamp_min(0), vals)


def test_direct_launch_of_the_one_token_decode():
    from workbench.kernels.decode import triton as decode_kernels

    generator = torch.Generator(device=CUDA).manual_seed(10)
    n_latents, width, k = DECODE["n_latents"], DECODE["width"], DECODE["k"]
    W = (torch.randn(n_latents, width, device=CUDA, generator=generator) / 64).to(torch.bfloat16)
    b = torch.randn(width, device=CUDA, generator=generator).to(torch.bfloat16)
    for _ in range(3):  # first call compiles, second launches directly and checks, third is direct
        acts = torch.rand(1, k, device=CUDA, generator=generator).to(torch.bfloat16)
        idx = torch.randperm(n_latents, device=CUDA, generator=generator)[:k].view(1, k)
        with torch.no_grad(), use("triton"):
            got = sparse_decode(acts, idx, W, b)
        torch.testing.assert_close(got.float(), decode_reference.decode_forward(acts, idx, W, b).float(), rtol=1.6e-2, atol=1e-2)
    assert decode_kernels._SLOTS_LAUNCH.enabled, "direct launches were switched off (see the log for why)"
    assert decode_kernels._SLOTS_LAUNCH._verified, "the direct launch never ran"


def test_direct_launch_through_a_one_token_plan():
    """A repeat one-token call goes through its stored plan (Triton's C launcher, pointers as
    ints) and gives the regular launch's bits; another stride (a non-contiguous view) or a
    bias gets its own plan, still right; a CPU input does not reach the plan."""
    from workbench.kernels.decode import triton as decode_kernels

    generator = torch.Generator(device=CUDA).manual_seed(11)
    n_latents, width, k = DECODE["n_latents"], DECODE["width"], DECODE["k"]
    W = (torch.randn(n_latents, width, device=CUDA, generator=generator) / 64).to(torch.bfloat16)
    b = torch.randn(width, device=CUDA, generator=generator).to(torch.bfloat16)
    wide = torch.rand(1, 2 * k, device=CUDA, generator=generator).to(torch.bfloat16)
    cases = {
        "contiguous": (wide[:, :k].contiguous(), None),
        "strided": (wide[:, ::2], None),
        "bias": (wide[:, :k].contiguous(), b),
    }
    idx = torch.randperm(n_latents, device=CUDA, generator=generator)[:k].view(1, k)
    for name, (acts, bias) in cases.items():
        signature = decode_kernels.lean_signature(acts, idx, W, bias)
        with torch.no_grad(), use("triton"):
            for _ in range(3):  # compile, check the direct launch, store the plan
                sparse_decode(acts, idx, W, bias)
            assert not decode_kernels._lean_off, f"plans were switched off: {decode_kernels._lean_off}"
            assert signature in decode_kernels._LEAN_PLANS, f"{name}: no plan was stored"
            planned = decode_kernels.lean_decode(acts, idx, W, bias)
            through_api = sparse_decode(acts, idx, W, bias)
        regular = decode_kernels.gather_sum(acts, idx, W, bias, out_dtype=acts.dtype)
        assert torch.equal(planned, regular), name
        assert torch.equal(through_api, regular), name
        want = decode_reference.decode_forward(acts, idx, W, bias).float()
        torch.testing.assert_close(through_api.float(), want, rtol=1.6e-2, atol=1e-2)
    if CUDA.type == "cuda":
        with torch.no_grad(), use("triton"), pytest.raises(WorkbenchError, match="one device"):
            sparse_decode(acts.cpu(), idx, W)
