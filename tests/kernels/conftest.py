"""Kernel tests: Triton kernels run on CPU tensors under Triton's interpreter.

TRITON_INTERPRET=1 must be in the environment before triton is first imported (triton
builds its own jit helpers at import), so it is set here, at conftest import, before any
test module of this folder imports the kernels (unless a GPU is present: see below). Other folders are unaffected in practice:
nothing else runs Triton kernels, and on CPU the kernels' dispatch picks the reference
unless a test forces Triton with `use("triton")`.

If something imported triton before this file ran (e.g. a test elsewhere that touched
torch._dynamo), the interpreter cannot be switched on any more: the `interpreter` fixture
then fails with that explanation instead of producing confusing kernel errors.
"""

from __future__ import annotations

import os
import sys

import torch  # noqa: E402  (importing torch does not import triton)

_TRITON_WAS_IMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    # On a GPU machine the kernels compile for the GPU (the `gpu` tests); there the CPU
    # interpreter tests run only when TRITON_INTERPRET=1 is set by hand.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from workbench.kernels import use  # noqa: E402


@pytest.fixture
def interpreter():
    """Run the test with the Triton backend forced on CPU tensors, i.e. in the interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU interpreter tests need TRITON_INTERPRET=1 (set automatically where there is no GPU)")
    if _TRITON_WAS_IMPORTED:
        pytest.fail(
            "triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
            "run with TRITON_INTERPRET=1 in the environment (or set it at the top of tests/conftest.py)"
        )
    with use("triton"):
        yield


@pytest.fixture
def generator():
    """A seeded CPU generator: every test draws fresh, reproducible random inputs."""
    return torch.Generator().manual_seed(1234)
