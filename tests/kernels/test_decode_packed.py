"""Packed (column-block-major) decoders: the layout, the tiles kernel reading it (CPU
interpreter, every launch config), and when a copy is made, reused and dropped."""

from __future__ import annotations

import pytest
import torch

from workbench.kernels import packed_decoders
from workbench.kernels.decode import packed, reference
from workbench.kernels.tuning import force_config

from kernel_checks import assert_close, make_indices


def test_pack_rows_puts_each_column_block_in_one_contiguous_range():
    W = torch.arange(70 * 300, dtype=torch.float32).view(70, 300)  # 300 = 2 blocks of 128 + 44
    for table in (W, W.t().contiguous().t()):  # row-major and column-major storage
        out = packed.pack_rows(table)
        assert out.shape == (3, 70, 128) and out.is_contiguous()
        for block in range(3):
            width = min(128, 300 - 128 * block)
            assert torch.equal(out[block, :, :width], W[:, 128 * block:128 * block + width])
        assert not out[2, :, 44:].any()  # past d_out: zeros


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_every_packed_config_matches_the_reference(interpreter, generator, weight_dtype, bias):
    from workbench.kernels.decode import triton as kernels

    # 300 rows: dozens of row tiles, so each persistent program walks several items; d_out
    # 300 leaves a ragged last column block; skewed codes repeat latents within a tile.
    acts = torch.randn(300, 5, generator=generator).to(torch.bfloat16)
    idx = make_indices(300, 5, 70, "skewed", generator)
    W = torch.randn(70, 300, generator=generator).to(weight_dtype)
    b = torch.randn(300, generator=generator).to(weight_dtype) if bias else None
    expected = reference.decode_forward(acts, idx, W, b)
    table = packed.pack_rows(W)
    for config in kernels.GATHER_TILES_PACKED.candidates:
        with force_config("gather_tiles_packed", config):
            got = kernels.gather_sum(acts, idx, W, b, out_dtype=acts.dtype, packed_table=table)
        assert_close(got, expected, f"packed {config}")


def test_a_packed_table_of_another_shape_is_refused(interpreter, generator):
    from workbench.kernels.decode import triton as kernels

    acts, idx = torch.ones(8, 2), make_indices(8, 2, 70, "unique", generator)
    W = torch.randn(70, 300, generator=generator)
    with pytest.raises(ValueError, match="not pack_rows"):
        kernels.gather_sum(acts, idx, W, packed_table=packed.pack_rows(W[:, :256]))


@pytest.fixture
def small_limits(monkeypatch):
    """Let the policy pack CPU tensors of test size; packing off unless a test turns it on."""
    monkeypatch.setattr(packed, "PACK_MIN_ROWS", 1)
    monkeypatch.setattr(packed, "PACK_MIN_BYTES", 0)
    monkeypatch.delenv(packed.ENV_VAR, raising=False)
    packed.reset()
    yield
    packed.reset()


def _room(W):
    return True


def test_copies_only_inside_the_scope_and_frees_them_at_exit(small_limits, generator):
    W = torch.randn(64, 256, generator=generator)
    assert packed.packed_table(W, 8, _room) is None  # opt-in: off by default
    with packed_decoders():
        first = packed.packed_table(W, 8, _room)
        assert torch.equal(first, packed.pack_rows(W))
        assert packed.packed_table(W, 8, _room) is first  # reused, not copied again
        assert packed.packed_table(W, 0, _room) is None  # too few rows to pay
        assert packed.packed_table(W[:, :128], 8, _room) is None  # one column block: nothing to gain
    assert not hasattr(W, packed._ATTRIBUTE)  # freed with the scope


def test_a_change_of_the_weights_makes_a_new_copy(small_limits, generator):
    W = torch.randn(64, 256, generator=generator)
    with packed_decoders():
        first = packed.packed_table(W, 8, _room)
        with torch.no_grad():
            W.mul_(2.0)  # in place: the version counter moves
        second = packed.packed_table(W, 8, _room)
        assert second is not first and torch.equal(second, packed.pack_rows(W))
        replaced = torch.randn(64, 256, generator=generator)
        W.data = replaced  # new storage: seen through the storage pointer
        assert torch.equal(packed.packed_table(W, 8, _room), packed.pack_rows(replaced))


def test_no_copy_without_room_or_for_inference_tensors(small_limits, generator):
    W = torch.randn(64, 256, generator=generator)
    with packed_decoders():
        assert packed.packed_table(W, 8, lambda W: False) is None
        with torch.inference_mode():
            frozen = torch.randn(64, 256)
        assert packed.packed_table(frozen, 8, _room) is None  # no version counter to watch


def test_environment_switch_and_stale_copies_dropped_by_the_gradient_path(small_limits, monkeypatch, generator):
    W = torch.randn(64, 256, generator=generator)
    monkeypatch.setenv(packed.ENV_VAR, "1")
    packed.reset()
    copy = packed.packed_table(W, 8, _room)
    assert copy is not None
    packed.drop_stale(W)
    assert hasattr(W, packed._ATTRIBUTE)  # unchanged weights keep their copy
    with torch.no_grad():
        W.add_(1.0)
    packed.drop_stale(W)  # what a training-step decode does: the old copy must not hold memory
    assert not hasattr(W, packed._ATTRIBUTE)
    monkeypatch.setenv(packed.ENV_VAR, "0")
    packed.reset()
    assert packed.packed_table(W, 8, _room) is None
