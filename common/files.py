"""Files written so that a crash leaves the old version or the new one, never half of one; full reads.

Why here, at the top of `common` and importing nothing from it: `common.secure` (keys, keysets,
signatures, envelopes, certificates), `common.data` and `common.llm` all write files that must
never be seen half-written, and `secure` and `data` may depend on nothing above them. A module
that depends on nothing can be imported by every one of them.

How a write is made atomic (the recipe of SQLite, git and `python-atomicwrites`): the bytes go to
a temporary file in the *same directory* (a rename is atomic only within one file system) under a
name `mkstemp` picks at random and creates with O_EXCL (so no other user can predict it and plant a
symlink there first), with its final permissions before the first byte; then the file is fsynced,
renamed over the target with `os.replace`, and the directory is fsynced so the rename itself
survives a power cut. On any failure the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeAlias, cast


def fsync_directory(folder: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename, a new file) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a directory; its renames are journaled by NTFS
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new contents into; `path` gets them only if the block completes.

    The file has permissions `mode` before a byte is written (key files get 0o600 without ever
    existing with wider ones); see the module docstring for the rest of the recipe.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:  # mkstemp's message names the random temp name; say which file could not be written
        raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def write_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically (see `atomic_output`)."""
    with atomic_output(path, mode=mode) as out:
        out.write(data)


class SupportsReadinto(Protocol):
    """A binary stream that reads into a caller's buffer (files opened "rb", sockets, io.BytesIO)."""

    def readinto(self, buffer: Any, /) -> int | None: ...


class SupportsRead(Protocol):
    """A binary stream that only returns new bytes (typing.BinaryIO promises no more than this)."""

    def read(self, size: int = ..., /) -> bytes: ...


Source: TypeAlias = SupportsReadinto | SupportsRead  # what the streaming readers of `common` accept


class Reader(SupportsReadinto, SupportsRead, Protocol):
    """A binary stream with both ways of reading (what `common` hands to a caller's consumer)."""


class Sink(Protocol):
    """A binary stream to write to: a file, a socket, io.BytesIO, or anything with `write`."""

    def write(self, data: Any, /) -> object: ...


def read_fully_into(src: Source, view: memoryview) -> int:
    """Read into `view` until it is full or `src` ends; the number of bytes read.

    One `readinto` may return less than asked (pipes, sockets, raw files, a reader of blocks), so
    a parser that needs n bytes loops. A source without `readinto` is read with `read`.
    """
    # getattr, not isinstance(src, SupportsReadinto): a protocol check costs ~10 us on Python 3.11, which
    # halved the envelope's throughput with 16 KiB chunks
    readinto = getattr(src, "readinto", None)
    fill = readinto if readinto is not None else _reader_into(cast(SupportsRead, src))
    total = 0
    while total < len(view):
        n = fill(view[total:])
        if not n:
            break
        total += n
    return total


def _reader_into(src: SupportsRead) -> Callable[[memoryview], int]:
    def fill(view: memoryview) -> int:
        data = src.read(len(view))
        view[: len(data)] = data
        return len(data)

    return fill
