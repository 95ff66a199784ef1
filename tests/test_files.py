"""common.files: an atomic write leaves the old file or the new one, with its mode from the first byte."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from common import files


def test_a_write_replaces_the_file_with_the_mode_asked_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)
    files.write_atomically(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "keyset.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), files.atomic_output(target) as out:
        out.write(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyset.json"]


def test_the_temp_file_has_an_unpredictable_name_beside_the_target_and_the_final_mode(tmp_path: Path) -> None:
    seen = []
    for _ in range(2):
        with files.atomic_output(tmp_path / "a.bin", mode=0o640) as out:
            out.write(b"x")
            (tmp,) = (p for p in tmp_path.iterdir() if p.name != "a.bin")  # same directory: an atomic rename
            seen.append(tmp.name)
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o640, (
                "the mode is set before a byte is written (mkstemp gives 0600)"
            )
    assert seen[0] != seen[1] and str(os.getpid()) not in seen[0]
    assert seen[0].startswith(".a.bin.") and seen[0].endswith(".partial")


def test_the_file_and_then_its_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    files.write_atomically(tmp_path / "x", b"data")
    assert synced == ["file", "dir"]


def test_a_folder_that_cannot_be_written_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot write .*nowhere/x"):
        files.write_atomically(tmp_path / "nowhere" / "x", b"data")


class Trickle(io.RawIOBase):
    """A stream that returns at most 3 bytes a call, as a pipe or socket may."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, view: Any) -> int:
        return self.data.readinto(memoryview(view)[:3])


class ReadOnly:
    """A source with `read` only (no `readinto`)."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self.data.read(min(n, 2))


@pytest.mark.parametrize("source", [Trickle, ReadOnly])
def test_read_fully_into_loops_over_short_reads_and_stops_at_the_end(source) -> None:
    buf = bytearray(8)
    src = source(b"0123456789")
    assert files.read_fully_into(src, memoryview(buf)) == 8 and buf == b"01234567"
    assert files.read_fully_into(src, memoryview(buf)) == 2 and buf[:2] == b"89"
    assert files.read_fully_into(src, memoryview(buf)) == 0
