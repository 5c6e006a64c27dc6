"""Backend dispatch: lazy, overridable, logged once, no import-time work, boundary errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from workbench.errors import UnknownNameError, WorkbenchError
from workbench.kernels import active_backend, dispatch, sparse_decode, topk_encode, use


def _run(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key not in ("TRITON_INTERPRET", "WORKBENCH_KERNELS")}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_loads_neither_triton_nor_dynamo():
    out = _run(
        "import sys, workbench.kernels\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton' "
        "or m.startswith(('workbench.kernels.decode.triton', 'workbench.kernels.encode.triton', 'torch._dynamo'))))"
    )
    assert out == "[]"


def test_auto_is_reference_on_cpu_and_the_reference_runs_without_triton():
    out = _run(
        "import sys, torch\n"
        "from workbench.kernels import sparse_decode, active_backend\n"
        "y = sparse_decode(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(4, 5))\n"
        "print(active_backend('sparse_decode', 'cpu', torch.float32), float(y.sum()), 'triton' in sys.modules)"
    )
    assert out == "reference 30.0 False"


def test_forcing_triton_where_it_cannot_run_warns_once_and_uses_the_reference():
    out = _run(
        "import logging, sys, torch\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s', stream=sys.stdout)\n"
        "from workbench.kernels import sparse_decode, active_backend\n"
        "for _ in range(3):\n"
        "    y = sparse_decode(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(4, 5))\n"
        "print(active_backend('sparse_decode', 'cpu', torch.float32))",
        WORKBENCH_KERNELS="triton",
    )
    lines = out.splitlines()
    assert lines[-1] == "reference"
    warnings = [line for line in lines if line.startswith("WARNING") and "TRITON_INTERPRET" in line]
    assert len(warnings) == 1, out


@pytest.fixture
def fresh_dispatch():
    dispatch.reset()
    yield
    dispatch.reset()


def test_environment_variable_and_use_override_in_order(monkeypatch, fresh_dispatch):
    monkeypatch.setenv("WORKBENCH_KERNELS", "reference")
    dispatch.reset()
    assert dispatch.current_mode() == "reference"
    with use("triton"):
        assert dispatch.current_mode() == "triton"
        with use("auto"):
            assert dispatch.current_mode() == "auto"
        assert dispatch.current_mode() == "triton"
    assert dispatch.current_mode() == "reference"
    monkeypatch.setenv("WORKBENCH_KERNELS", "triton")
    assert dispatch.current_mode() == "reference", "read once: a later change needs reset()"
    dispatch.reset()
    assert dispatch.current_mode() == "triton"
    monkeypatch.setenv("WORKBENCH_KERNELS", "cuda-please")
    dispatch.reset()
    with pytest.raises(UnknownNameError, match="expected one of: auto, reference, triton"):
        dispatch.current_mode()
    with pytest.raises(UnknownNameError):
        with use("fast"):
            pass


def test_choice_is_cached_and_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="workbench.kernels"):
        with use("reference"):
            for _ in range(3):
                assert active_backend("sparse_decode", torch.device("cpu"), torch.bfloat16) == "reference"
    messages = [r.getMessage() for r in caplog.records if "sparse_decode on cpu/bfloat16" in r.getMessage()]
    assert len(messages) <= 1  # 0 if an earlier test already made (and logged) this choice


def test_float64_always_uses_the_reference(interpreter):
    assert active_backend("topk_encode", "cpu", torch.float64) == "reference"
    assert active_backend("topk_encode", "cpu", torch.float32) == "triton"


def test_bad_inputs_raise_workbench_errors():
    acts, idx, W = torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(4, 5)
    with pytest.raises(WorkbenchError, match="one shape"):
        sparse_decode(acts, idx[:, :2], W)
    with pytest.raises(WorkbenchError, match="int64 or int32"):
        sparse_decode(acts, idx.float(), W)
    with pytest.raises(WorkbenchError, match=r"ids in \[0, 3\]"):
        sparse_decode(acts, idx + 4, W)
    with pytest.raises(WorkbenchError, match=r"b_dec \[5\]"):
        sparse_decode(acts, idx, W, torch.ones(4))
    x, W_enc, b_enc = torch.ones(2, 5), torch.ones(5, 7), torch.ones(7)
    with pytest.raises(WorkbenchError, match="1 <= k <= d_sae = 7"):
        topk_encode(x, W_enc, b_enc, 8)
    with pytest.raises(WorkbenchError, match="bool tensor"):
        topk_encode(x, W_enc, b_enc, 2, dead_mask=torch.ones(7), k_aux=2)
    with pytest.raises(WorkbenchError, match="x has width 4"):
        topk_encode(torch.ones(2, 4), W_enc, b_enc, 2)
