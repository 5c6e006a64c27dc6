"""Compatibility of Triton's CPU interpreter (TRITON_INTERPRET=1) with numpy >= 2.4.

The interpreter keeps every scalar as a one-element numpy array and turns it into a Python
int with `int(array)` (e.g. for `range(0, K)` over a kernel argument). numpy 2.4 removed
that conversion for arrays with a dimension ("only 0-dimensional arrays can be converted
to Python scalars"), so every kernel with a loop bound taken from an argument fails under
triton 3.6's interpreter. `install()` re-registers that one conversion with `.item()`,
which is what the interpreter meant.

Two more gaps in bf16 handling, where the interpreter would disagree with the GPU:
- it stores bf16 as raw uint16 bits and its `tl.dot` multiplies those bits as integers:
  `install()` widens bf16 dot operands to fp32 first (bf16 products are exact in fp32, as
  on the tensor cores);
- its fp32 -> bf16 cast truncates, where the GPU (and torch) round to nearest even:
  `install()` routes that cast through torch's conversion.

Both patches touch nothing when the interpreter is off; compiled GPU kernels never go
through this code.
"""

from __future__ import annotations

import os

_installed = False


def install() -> None:
    """Patch the interpreter's scalar `__index__` once per process (no-op unless TRITON_INTERPRET=1)."""
    global _installed
    if _installed or os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0].item()))

    interpreter._patch_lang_tensor = patch_lang_tensor

    import numpy as np
    import triton.language as tl

    builder = interpreter.InterpreterBuilder
    original_dot = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(handle):
            if handle.dtype.scalar != tl.bfloat16:
                return handle
            data = interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view(np.float32)
            return interpreter.TensorHandle(data, tl.float32)

        return original_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot

    import torch

    original_cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.array(src.data, dtype=np.float32)).to(torch.bfloat16)  # keeps 0-d shapes
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return original_cast(self, src, dst_type)

    builder.cast_impl = cast_impl
    builder.create_fp_trunc = lambda self, src, dst_type: self.cast_impl(src, dst_type)
    _installed = True
