"""Launching a compiled Triton kernel straight through its C launcher (one-token latency).

`kernel[grid](*args)` costs several microseconds of Python per call (argument binding and
specialisation, cache-key strings, hooks) before the launch itself. For one-token decodes
that is most of the wall time, so `DirectLaunch` keeps the compiled kernel of each key and
calls its launcher directly. That is only sound when the compiled code cannot depend on the
argument values, so the kernel must be declared with every int argument in
`do_not_specialize` and every pointer in `do_not_specialize_on_alignment`: the code then
depends only on the argument dtypes, the int widths (callers pass ints below 2**31) and the
constexprs, which together form the caller's key.

As a guard against a launcher API change, the first direct launch of each key is compared
with a regular launch into the same output (the same deterministic kernel must give the
same bits); a mismatch or an exception switches direct launches off for the process,
with a warning. Under the Triton interpreter launches are always regular, and
`WORKBENCH_KERNELS_DIRECT=0` in the environment turns direct launches off from the start
(bench/gpu_kernels.sh sets it when its probe of this feature fails).

`c_launcher` goes one step further for callers that store a whole launch plan (the
one-token decode): Triton's Python wrapper around its C launcher allocates scratch buffers
and builds a closure on every call, and the C launcher calls `data_ptr()` and the driver's
`cuPointerGetAttribute` on every tensor argument. A plan that already knows every device
can call the C function itself with its pointers as ints, which skips all of that.
"""

from __future__ import annotations

import logging
import os

import torch

from workbench.kernels.tuning import interpreting

log = logging.getLogger("workbench.kernels")


class DirectLaunch:
    """Per-key cache of one kernel's compiled form, launched without JITFunction.run."""

    def __init__(self, kernel):
        self.kernel = kernel
        """The @triton.jit function (ints not specialised, pointers not specialised on alignment)."""
        self.enabled = os.environ.get("WORKBENCH_KERNELS_DIRECT", "1") != "0"
        """False after a failed check (or with WORKBENCH_KERNELS_DIRECT=0): regular launches only."""
        self._compiled: dict[tuple, tuple[object, tuple]] = {}
        self._verified: set[tuple] = set()
        self.on_disable: list = []
        """Callables run when direct launches are switched off (callers drop their own caches)."""

    def _constexpr_tail(self, n_args: int, meta: dict) -> tuple:
        # The launcher takes every parameter in order, constexprs included (it ignores them).
        return tuple(meta.get(param.name, param.default) for param in self.kernel.params[n_args:])

    def __call__(self, key: tuple, grid: tuple, args: tuple, meta: dict, options: dict, out: torch.Tensor) -> None:
        """Launch kernel[grid](*args, **meta, **options); `out` is the tensor it writes completely."""
        entry = self._compiled.get(key) if self.enabled else None
        if entry is None:
            compiled = self.kernel[grid](*args, **meta, **options)
            if self.enabled and not interpreting() and hasattr(compiled, "packed_metadata"):
                self._compiled[key] = (compiled, self._constexpr_tail(len(args), meta))
            return
        compiled, tail = entry
        grid = tuple(grid) + (1,) * (3 - len(grid))
        try:
            stream = torch._C._cuda_getCurrentRawStream(out.device.index)
            compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata,
                         None, None, None, *args, *tail)
        except Exception as error:  # noqa: BLE001 (any launcher mismatch: back to regular launches)
            self._disable(f"{type(error).__name__}: {error}")
            self.kernel[grid](*args, **meta, **options)
            return
        if key not in self._verified:
            direct = out.clone()
            self.kernel[grid](*args, **meta, **options)
            if torch.equal(direct.view(torch.uint8), out.view(torch.uint8)):  # bits: NaN-safe
                self._verified.add(key)
            else:
                self._disable("its output differs from a regular launch")

    def verified_entry(self, key: tuple) -> tuple[object, tuple] | None:
        """(compiled kernel, constexpr tail) of a key whose direct launch passed its check, else None."""
        if not self.enabled or key not in self._verified:
            return None
        return self._compiled.get(key)

    def _disable(self, why: str) -> None:
        self.enabled = False
        self._compiled.clear()
        for hook in self.on_disable:
            hook()
        log.warning("kernels: direct launches of %s switched off (%s); using regular launches", self.kernel.fn.__name__, why)


def c_launcher(compiled) -> tuple | None:
    """(launch, function, cooperative, pdl, packed_metadata) of a compiled kernel, or None.

    `launch(gridX, gridY, gridZ, stream, function, cooperative, pdl, None, None,
    packed_metadata, None, None, None, *args)` is Triton's C launcher with no Python in
    between; pointer arguments may be given as ints (device addresses). None when this
    Triton build's launcher has another form or the kernel needs scratch buffers, which the
    Python wrapper allocates: callers then keep the regular direct launch.
    """
    runner = compiled.run
    launch = getattr(runner, "launch", None)
    if launch is None or getattr(runner, "global_scratch_size", 1) or getattr(runner, "profile_scratch_size", 1):
        return None
    try:
        return (launch, compiled.function, bool(runner.launch_cooperative_grid), bool(runner.launch_pdl),
                compiled.packed_metadata)
    except AttributeError:
        return None
