"""Secrets in memory: the kernel's flags for a mapping, and decrypted weights kept out of core dumps."""

from __future__ import annotations

import ctypes
import mmap
import sys

import pytest

from common.secure import weights
from common.secure.memory import mapping_flags, memory_exposure

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc/self/smaps")


def address_of(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def test_flags_show_what_was_asked_for_one_mapping_and_not_another() -> None:
    marked, plain = mmap.mmap(-1, 1 << 20), mmap.mmap(-1, 1 << 20)
    marked.madvise(mmap.MADV_DONTDUMP)
    assert "dd" in mapping_flags(address_of(marked)) and "dd" not in mapping_flags(address_of(plain))
    assert {"rd", "wr"} <= mapping_flags(address_of(plain) + (1 << 20) - 1)  # the last byte is in the same mapping


def test_an_unmapped_address_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="no mapping of this process holds address 0x8"):
        mapping_flags(8)  # the first page is never mapped on Linux (vm.mmap_min_addr)


def test_decrypted_weights_buffer_is_left_out_of_core_dumps() -> None:
    writer = weights._MemoryWriter(4 << 20)
    assert isinstance(writer._memory, mmap.mmap)
    assert "dd" in mapping_flags(address_of(writer._memory))


def test_exposure_reports_limits_as_numbers_or_unlimited() -> None:
    found = memory_exposure()
    for key in ("core dump size limit (RLIMIT_CORE, soft)", "mlock limit, bytes (RLIMIT_MEMLOCK, soft)"):
        assert found[key] == "unlimited" or (isinstance(found[key], int) and found[key] >= 0), found
    assert isinstance(found["swap areas"], int) and found["swap areas"] >= 0
