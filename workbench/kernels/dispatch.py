"""Which implementation runs each sparse op: the plain-torch reference or the Triton kernels.

The choice is made lazily, per (op, device type, dtype), at the first call that needs it,
cached, and logged once on the `workbench.kernels` logger. Nothing happens at import: this
module never imports triton until a choice needs it, and a failed triton import means the
reference path (logged).

Precedence, highest first:
1. `with use("reference" | "triton" | "auto"):` (thread-local, nestable);
2. the environment variable `WORKBENCH_KERNELS=reference|triton|auto`, read at the first
   call that needs it (the environment lookup would cost about a microsecond on every
   one-token call); `reset()` reads it again;
3. auto: Triton on CUDA, the reference everywhere else.

Triton runs on CPU tensors only through its interpreter (`TRITON_INTERPRET=1`, set before
triton is imported), and only when forced (`use("triton")` or `WORKBENCH_KERNELS=triton`):
that is how the CPU test suite checks the kernels. Forcing Triton where it cannot run logs
a warning once and uses the reference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Iterator

import torch

from workbench.errors import UnknownNameError

log = logging.getLogger("workbench.kernels")

BACKENDS = ("reference", "triton")
MODES = ("auto", "reference", "triton")
ENV_VAR = "WORKBENCH_KERNELS"

# The dtypes (of an op's leading tensor) the Triton kernels handle; others (fp64) use the reference.
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_local = threading.local()
_choices: dict[tuple, str] = {}
_triton_status: dict[str, tuple[bool, str]] = {}
_lock = threading.Lock()
_env_mode: list[str] = []
"""The mode $WORKBENCH_KERNELS names, once read (empty until then, and after reset())."""


def _override_stack() -> list[str]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _check_mode(mode: str, source: str) -> str:
    if mode not in MODES:
        raise UnknownNameError("kernel backend", mode, MODES, hint=f"(from {source})")
    return mode


def current_mode() -> str:
    """The mode in force here: the innermost `use(...)`, else $WORKBENCH_KERNELS, else 'auto'."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    if _env_mode:
        return _env_mode[0]
    env = (os.environ.get(ENV_VAR) or "").strip().lower()
    mode = _check_mode(env, f"${ENV_VAR}") if env else "auto"
    _env_mode.append(mode)
    return mode


@contextlib.contextmanager
def use(backend: str) -> Iterator[None]:
    """Force a backend inside the block: 'reference', 'triton' or 'auto' (thread-local).

    >>> with use("reference"):
    ...     y = sparse_decode(acts, indices, W_dec)
    """
    stack = _override_stack()
    stack.append(_check_mode(backend, "use()"))
    try:
        yield
    finally:
        stack.pop()


def triton_status(device_type: str) -> tuple[bool, str]:
    """(usable, reason) for running Triton kernels on tensors of this device type.

    Imports triton on first call (never at import of this module). On CPU the kernels run
    only under the interpreter, which needs TRITON_INTERPRET=1 before triton is imported.
    """
    cached = _triton_status.get(device_type)
    if cached is not None:
        return cached
    if device_type == "cuda" and not torch.cuda.is_available():
        status = (False, "CUDA is not available")
    elif device_type not in ("cuda", "cpu"):
        status = (False, f"no Triton kernels for device type {device_type!r}")
    elif device_type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        status = (False, "Triton runs on CPU tensors only with TRITON_INTERPRET=1 set before triton is imported")
    else:
        try:
            import triton  # noqa: F401  (the import is the check)

            status = (True, f"triton {triton.__version__}")
        except Exception as error:  # any import failure means: no Triton here
            status = (False, f"triton import failed: {type(error).__name__}: {error}")
    _triton_status[device_type] = status
    return status


def _choose(op: str, device_type: str, dtype: torch.dtype, mode: str) -> str:
    key = (op, device_type, dtype, mode)
    choice = _choices.get(key)
    if choice is not None:
        return choice
    with _lock:
        choice = _choices.get(key)
        if choice is not None:
            return choice
        level = logging.INFO
        if mode == "reference":
            choice, reason = "reference", "forced"
        elif dtype not in TRITON_DTYPES:
            choice, reason = "reference", f"no Triton kernel for {dtype}"
        elif mode == "auto" and device_type != "cuda":
            choice, reason = "reference", f"auto on {device_type}"
        else:
            usable, why = triton_status(device_type)
            if usable:
                choice, reason = "triton", ("forced, " if mode == "triton" else "auto, ") + why
            else:
                choice, reason = "reference", why
                level = logging.WARNING if mode == "triton" else logging.INFO
        _choices[key] = choice
        log.log(level, "kernels: %s on %s/%s -> %s (%s)", op, device_type, str(dtype).replace("torch.", ""), choice, reason)
        return choice


def active_backend(op: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """'reference' or 'triton': what `op` uses for tensors on `device` with `dtype` here.

    `op` is one of the public op names (`sparse_decode`, `topk_encode`, ...).
    """
    device_type = device.type if type(device) is torch.device else torch.device(device).type
    return _resolve(op, device_type, dtype)


def _resolve(op: str, device_type: str, dtype: torch.dtype) -> str:
    mode = current_mode()
    choice = _choices.get((op, device_type, dtype, mode))  # the per-call fast path
    return choice if choice is not None else _choose(op, device_type, dtype, mode)


# torch.compile runs `_resolve` once while tracing and bakes the answer into the graph (a
# compiled function keeps the backend it was compiled with). This attribute is exactly what
# `torch.compiler.assume_constant_result` sets; the decorator itself imports torch._dynamo,
# which imports triton, and this module must import neither.
_resolve._dynamo_marked_constant = True  # type: ignore[attr-defined]


def reset() -> None:
    """Forget cached choices, triton status, $WORKBENCH_KERNELS and $WORKBENCH_KERNELS_PACK (read again at the next call);
    code that changes the environment variable after a first call uses this."""
    from workbench.kernels.decode import packed  # torch only; here to keep this module's imports minimal

    with _lock:
        _choices.clear()
        _triton_status.clear()
        _env_mode.clear()
    packed.reset()
