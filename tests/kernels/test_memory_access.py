"""Coalescing and bank conflicts counted from the addresses each warp touches on Numba's CUDA simulator."""

from __future__ import annotations

import numpy as np
import pytest

from common.kernels.analysis.memory_access import WarpAccess, trace_launch
from common.kernels.demos import access_patterns


def warp(offsets, itemsize=4, space="global"):
    return WarpAccess("a", space, "load", (0, 0, 0), 0, 0, tuple(offsets), itemsize)


def test_sectors_of_a_warp_are_the_distinct_32_byte_pieces_it_touches():
    lanes = np.arange(32)
    assert warp(lanes * 4).sectors == 4 and warp(lanes * 4).ideal_sectors == 4  # 128 contiguous bytes
    assert warp(lanes * 4 + 4).sectors == 5  # the same bytes shifted by one float straddle one more sector
    assert warp(lanes * 8).sectors == 8 and warp(lanes * 8).ideal_sectors == 4  # stride 2: half of each sector unused
    assert warp(lanes * 128).sectors == 32  # one sector per thread
    assert warp([0] * 32).sectors == 1 and warp([0] * 32).ideal_sectors == 1  # one float for everyone


def test_bank_conflicts_count_distinct_words_per_bank():
    lanes = np.arange(32)
    assert warp(lanes * 4, space="shared").bank_conflict_degree == 1  # 32 words, 32 banks
    assert warp(lanes * 32 * 4, space="shared").bank_conflict_degree == 32  # a tile column: every word in bank 0
    assert warp(lanes * 33 * 4, space="shared").bank_conflict_degree == 1  # padded column: banks 0, 1, ..., 31
    assert warp(lanes * 2 * 4, space="shared").bank_conflict_degree == 2  # stride 2: two words per used bank
    assert warp([8] * 32, space="shared").bank_conflict_degree == 1  # one word for all: a broadcast


@pytest.mark.parametrize(("stride", "sectors_per_warp"), [(1, 4), (2, 8), (32, 32)])
def test_a_strided_copy_touches_more_sectors_for_the_same_bytes(stride, sectors_per_warp):
    x = np.arange(64 * 32, dtype=np.float32)
    out = np.zeros(64, np.float32)
    trace = trace_launch(access_patterns.copy_strided, 1, 64, x=x, out=out, stride=stride)
    np.testing.assert_array_equal(out, x[(np.arange(64) * stride) % x.size])  # the copy still happened
    loads = trace.warp_accesses("x", "load")
    assert [a.sectors for a in loads] == [sectors_per_warp] * 2  # two warps of 32
    assert trace.global_sectors("x") == (2 * sectors_per_warp, 8)
    assert trace.global_sectors("out") == (8, 8)  # the stores stay coalesced


@pytest.mark.parametrize(
    ("kernel", "degree"),
    [
        (access_patterns.tile_rows, 1),
        (access_patterns.tile_columns, 32),
        (access_patterns.tile_columns_padded, 1),
    ],
    ids=["rows", "columns", "padded columns"],
)
def test_shared_tile_bank_conflicts(kernel, degree):
    slab = np.arange(4 * 32, dtype=np.float32).reshape(4, 32)
    out = np.zeros_like(slab)
    trace = trace_launch(kernel, 1, (32, 4), x=slab, out=out)
    np.testing.assert_array_equal(out, slab)
    shared = [a for a in trace.warp_accesses() if a.space == "shared"]
    assert len(shared) == 8  # 4 warps, one store and one load each
    assert {a.bank_conflict_degree for a in shared} == {degree}
    assert trace.worst_bank_conflict() == degree
    assert trace.global_sectors() == (32, 32)  # global traffic is the same for all three


def test_refusals(monkeypatch):
    x = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="tiny"):
        trace_launch(access_patterns.copy_strided, 64, 128, x=x, out=x.copy(), stride=1)
    from numba.core import config

    monkeypatch.setattr(config, "ENABLE_CUDASIM", 0)
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        trace_launch(access_patterns.copy_strided, 1, 8, x=x, out=x.copy(), stride=1)
