"""Handing tables between processes and to torch without copying them, and naming every copy that remains.

Three ways to give another process a table, cheapest first:
- **a memory-mapped Arrow IPC file** (`map_ipc`): the reader's table is a set of views of the file's
  pages; opening it costs the same for 1 MB and 1 GB, and only the pages a computation touches are read;
- **shared memory** (`SharedTable`, `attach`): the producer writes an Arrow IPC stream once into a named
  `multiprocessing.shared_memory` block; a consumer maps it by name, read-only, and reads views of it;
- what people usually write: **pickling the table through a `multiprocessing.Queue`**, which serialises
  it, pushes every byte through a pipe, and rebuilds it on the other side (`Consumer.send_pickled`).

And from a column to torch (`column_to_tensor`, `batch_to_tensors`): DLPack hands torch Arrow's buffer
itself. A copy is needed for nulls (torch has no validity bitmap), strings (torch has no strings: they
become codes into a fixed vocabulary), booleans (Arrow packs them into bits), several chunks (torch
wants one buffer) and writes (Arrow memory is immutable, and may be a file's pages or another
process's memory). Each such copy is made only when allowed, and reported by column and reason.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from common.data.errors import CorruptFile
from common.data.memory import Region, assert_zero_copy, copied_regions, regions, resident_by_kind

if TYPE_CHECKING:
    import torch

__all__ = [
    "Consumer",
    "Copy",
    "CopyRequired",
    "MappedIPC",
    "Receipt",
    "SharedTable",
    "assert_zero_copy",
    "attach",
    "batch_to_tensors",
    "column_to_tensor",
    "map_ipc",
]


# --- memory-mapped Arrow IPC files -------------------------------------------------------------------------


@dataclass
class MappedIPC:
    """An Arrow IPC file mapped into memory: `table`'s buffers are views of `buffer`, the file's pages."""

    path: Path
    buffer: pa.Buffer
    table: pa.Table

    @property
    def region(self) -> Region:
        return Region(f"{self.path.name} (mapped)", self.buffer.address, self.buffer.size)


def map_ipc(path: str | os.PathLike[str]) -> MappedIPC:
    """Map an uncompressed Arrow IPC file and read its table without copying a byte of data.

    Refuses (ValueError) a file whose reading would copy, e.g. a compressed one: it would be decompressed
    into fresh memory, so "mapped" would be the wrong word for it. The check costs nothing per batch: the
    reader gets a memory pool of its own, and any byte it allocates is a byte it copied.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Arrow IPC file at {path}")
    with pa.memory_map(str(path), "r") as source:
        buffer = source.read_buffer()  # the whole file, as a view of the mapping (which it keeps alive)
    pool = pa.proxy_memory_pool(pa.default_memory_pool())  # counts what this read allocates, and only that
    try:
        table = ipc.open_file(buffer, memory_pool=pool).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFile(f"{path}: not a readable Arrow IPC file (truncated or corrupt?): {exc}") from exc
    if copied := pool.max_memory():
        del table  # its buffers came from `pool`: they must go before it does
        raise ValueError(
            f"{path.name}: reading it allocated {copied:,} bytes, so it cannot be mapped as it is: it is "
            "probably compressed. Write it uncompressed (ipc.IpcWriteOptions(compression=None))"
        )
    return MappedIPC(path, buffer, table)


# --- shared memory ------------------------------------------------------------------------------------------


def _ipc_stream_size(table: pa.Table) -> int:
    sink = pa.MockOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.size()


class SharedTable:
    """A table written once, as an Arrow IPC stream, into a named shared-memory block that other processes
    `attach` to by `name`. The creator owns the block: `close()` (or leaving a `with`) unlinks it.

    Lifetime rules, which this class follows: every Arrow reference into a block is released before the
    block is closed (an exported buffer makes `close()` fail), and only the creator unlinks it.
    """

    def __init__(self, table: pa.Table):
        if not isinstance(table, pa.Table):
            raise TypeError(f"SharedTable takes a pyarrow.Table, got {type(table).__name__}")
        self.nbytes = _ipc_stream_size(table)
        self.num_rows = table.num_rows
        self._shm: shared_memory.SharedMemory | None = shared_memory.SharedMemory(create=True, size=max(self.nbytes, 1))
        try:
            target = pa.py_buffer(self._shm.buf)
            with ipc.new_stream(pa.FixedSizeBufferWriter(target), table.schema) as writer:
                writer.write_table(table)
            del writer, target  # release the export of shm.buf, or close() below could not unmap it
        except BaseException:
            self.close()
            raise
        self.name = self._shm.name

    def close(self) -> None:
        """Unmap and unlink the block (idempotent). Processes still attached keep their mapping until
        they leave `attach`; the name is gone at once."""
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()

    def __enter__(self) -> SharedTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._shm is None else self.name
        return f"SharedTable({self.num_rows:,} rows, {self.nbytes:,} bytes, {state})"


def _map_shared(name: str) -> mmap.mmap:
    """A read-only mapping of the shared-memory block `name`, which this process does not own.

    Why not `SharedMemory(name)`: before Python 3.13 (which added `track=False`) attaching registers the
    block with this process's resource tracker, which unlinks it when this process exits, under the
    creator's feet. A read-only mapping also makes the block unwritable from here.
    """
    if os.name != "posix":  # pragma: no cover - Windows: no resource tracker, named mappings
        shm = shared_memory.SharedMemory(name)
        return shm._mmap  # type: ignore[attr-defined]  # SharedMemory keeps its mapping private; Windows only
    import _posixshmem  # type: ignore[import-not-found]  # CPython's private module: no stubs

    try:
        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDONLY, mode=0)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no shared-memory block named {name!r}: closed by its creator, or never made"
        ) from None
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def _open_shared(name: str) -> tuple[mmap.mmap, pa.Buffer, pa.Table]:
    """The mapping of block `name`, an Arrow buffer over all of it, and the table read from that buffer."""
    mapping = _map_shared(name)
    view = pa.py_buffer(mapping)
    return mapping, view, ipc.open_stream(view).read_all()


@contextlib.contextmanager
def attach(name: str) -> Iterator[pa.Table]:
    """The table in shared-memory block `name`, as read-only views of the block.

    Leaving the `with` unmaps the block at once if nothing made from the table (arrays, NumPy views,
    tensors) is still alive; otherwise the mapping lives exactly as long as they do, because each Arrow
    buffer holds a reference to it. Either way the memory is never freed under a live view.
    """
    mapping, view, table = _open_shared(name)
    try:
        yield table
    finally:
        del table, view
        with contextlib.suppress(BufferError):  # views still alive: they keep the mapping until they go
            mapping.close()


# --- another process: handing tables over and timing it ---------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """What the consumer process reported back for one table handed to it."""

    how: str
    seconds: float  # from the producer's send to the consumer's answer
    rows: int
    total: float  # the sum of the chosen column, computed by the consumer: proof it can use the table
    copied_bytes: int  # bytes of the consumer's table that lie outside any shared mapping: its copies
    mapped_growth: int | None  # resident pages of mapped files or shared memory the consumer gained
    open_seconds: float  # the consumer's own time to have a usable table, before computing


def _consume(inbox: Any, outbox: Any) -> None:  # pragma: no cover - runs in the child process
    outbox.put("ready")
    while True:
        if (message := inbox.get()) is None:
            return
        before = resident_by_kind()
        how, payload, column = message
        if how == "flush":
            outbox.put("flushed")
            continue
        t0 = time.perf_counter()
        if how == "pickle":
            table, source = payload, None
        elif how == "file":
            mapped = map_ipc(payload)
            table, source = mapped.table, mapped.buffer
        else:
            mapping, source, table = _open_shared(payload)
        opened = time.perf_counter() - t0
        total = pc.sum(table[column]).as_py() if column else 0.0
        after = resident_by_kind()
        outbox.put((table.num_rows, float(total or 0.0), opened))  # the producer's clock stops here
        # then, untimed: which of the table's bytes are copies (a pickled table's are all copies), and
        # letting go of the table before answering, so that freeing it is not timed as the next handoff
        copied = sum(r.nbytes for r in (regions(table) if source is None else copied_regions(source, table)))
        mapped_growth = None if not (after and before) else sum(after[k] - before[k] for k in ("file", "shmem"))
        del table, source, payload, message
        if how == "shared":
            with contextlib.suppress(BufferError):
                mapping.close()
        outbox.put((copied, mapped_growth))


class Consumer:
    """A second Python process (started with `spawn`, as on macOS and Windows) that receives tables and
    sums one column of each, so every way of handing a table over is timed doing the same work.

    Start it before timing: starting a Python process and importing Arrow takes a second or two.
    """

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._process: mp.process.BaseProcess | None = ctx.Process(
            target=_consume, args=(self._inbox, self._outbox), daemon=True
        )
        self._process.start()
        if self._answer(timeout=120) != "ready":
            raise RuntimeError("the consumer process did not start")

    def _answer(self, timeout: float) -> Any:
        """The consumer's next message; RuntimeError at once if it died instead of answering."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(queue.Empty):
                return self._outbox.get(timeout=0.05)
            if self._process is None or not self._process.is_alive():
                code = None if self._process is None else self._process.exitcode
                raise RuntimeError(f"the consumer process ended (exit code {code}) without answering")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the consumer process did not answer within {timeout:.0f} s")

    def _send(self, how: str, payload: Any, column: str | None) -> Receipt:
        if self._process is None or not self._process.is_alive():
            raise RuntimeError("the consumer process is not running")
        t0 = time.perf_counter()
        self._inbox.put((how, payload, column))
        rows, total, opened = self._answer(timeout=600)
        seconds = time.perf_counter() - t0
        copied, mapped_growth = self._answer(timeout=600)
        if how == "pickle":
            # The Queue's feeder thread holds the pickled bytes until it pickles the next message, so a
            # large table would be freed (tens of ms for 1 GiB) during the next, timed send. Flush it now.
            self._inbox.put(("flush", None, None))
            if self._answer(timeout=600) != "flushed":
                raise RuntimeError("the consumer process answered out of turn")
        return Receipt(how, seconds, rows, total, copied, mapped_growth, opened)

    def send_pickled(self, table: pa.Table, column: str | None = None) -> Receipt:
        """The usual way: the table is pickled through a `multiprocessing.Queue` (a copy on each side)."""
        return self._send("pickle", table, column)

    def send_shared(self, shared: SharedTable, column: str | None = None) -> Receipt:
        """Only the block's name crosses; the consumer maps the block and reads views of it."""
        return self._send("shared", shared.name, column)

    def send_file(self, path: str | os.PathLike[str], column: str | None = None) -> Receipt:
        """Only the path crosses; the consumer maps the Arrow IPC file and reads views of its pages."""
        return self._send("file", str(path), column)

    def close(self) -> None:
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._inbox.put(None)
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
            self._process = None

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Arrow columns into torch -----------------------------------------------------------------------------


class CopyRequired(ValueError):
    """A column cannot become a tensor without a copy, and no copy was allowed."""

    def __init__(self, column: str, reason: str, hint: str):
        super().__init__(f"column {column!r} needs a copy to become a tensor ({reason}): {hint}")
        self.column, self.reason = column, reason


@dataclass(frozen=True)
class Copy:
    """A copy made on the way to torch: which column, why, and how many bytes it wrote."""

    column: str
    reason: str
    nbytes: int


def _single_array(column: Any, name: str, copies: list[Copy], allow_copy: bool) -> pa.Array:
    if isinstance(column, pl.Series):
        column = column.to_arrow()
    if isinstance(column, np.ndarray):
        column = pa.array(column)
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return column.chunk(0)
        if not allow_copy:
            raise CopyRequired(name, "several chunks", "combine the chunks first, or pass allow_copy=True")
        combined = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
        copies.append(Copy(name, "chunks combined into one buffer", combined.nbytes))
        return combined
    if not isinstance(column, pa.Array):
        raise TypeError(
            f"column {name!r} is a {type(column).__name__}: expected a pyarrow Array or ChunkedArray, "
            "a polars Series or a NumPy array"
        )
    return column


def column_to_tensor(
    column: pa.Array | pa.ChunkedArray | pl.Series | np.ndarray,
    *,
    name: str = "column",
    fill_null: float | int | None = None,
    categories: Sequence[str] | None = None,
    writable: bool = False,
    allow_copy: bool = True,
    copies: list[Copy] | None = None,
) -> torch.Tensor:
    """A tensor over the column's own buffer (DLPack) when the layout allows; otherwise one named copy.

    - nulls: filled with `fill_null` (required: nothing is coerced silently); a copy;
    - strings: codes into `categories` (required; an unknown value is an error); a copy;
    - booleans: unpacked from bits to one byte each; a copy;
    - several chunks: combined; a copy;
    - `writable=True`: a copy, because Arrow memory must not be written (other arrays, a mapped file or
      another process may share it). Without it the tensor is a view: do not write to it.
    With `allow_copy=False` each of these raises CopyRequired instead. Copies made are appended to `copies`.
    """
    import torch

    made: list[Copy] = [] if copies is None else copies
    array = _single_array(column, name, made, allow_copy)
    t = array.type

    def need(reason: str, hint: str) -> None:
        if not allow_copy:
            raise CopyRequired(name, reason, hint)

    if pa.types.is_dictionary(t):
        array = array.dictionary_decode()
        t = array.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        if categories is None:
            raise CopyRequired(name, "strings", "torch has no strings: pass categories=[...] to turn them into codes")
        need("strings", "strings become int32 codes into `categories`, which is a new buffer")
        codes = pc.index_in(array, value_set=pa.array(list(categories), type=pa.string()))
        unknown = pc.and_(pc.is_null(codes), pc.is_valid(array))
        if pc.any(unknown).as_py():
            examples = pc.unique(array.filter(unknown)).to_pylist()[:5]
            raise ValueError(f"column {name!r} has values not in categories {list(categories)}: {examples}")
        if array.null_count:
            if fill_null is None:
                raise CopyRequired(name, "nulls", "pass fill_null= (a code, e.g. -1) for missing strings")
            codes = codes.fill_null(int(fill_null))
        out = torch.from_dlpack(codes)  # a new buffer already: ours to hand over
        made.append(Copy(name, "strings to category codes", out.nbytes))
        return out
    if pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_date64(t):
        array = array.view(pa.int64())  # the same buffer, read as integers (no copy)
        t = array.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise TypeError(f"column {name!r} is {t}: expected numbers, booleans, timestamps, or strings with categories")
    if array.null_count:
        if fill_null is None:
            raise CopyRequired(name, "nulls", "torch has no validity bitmap: pass fill_null= (e.g. float('nan'))")
        need("nulls", "filling the nulls writes a new buffer")
        array = array.fill_null(pa.scalar(fill_null).cast(t))
        made.append(Copy(name, f"nulls filled with {fill_null!r}", len(array) * t.bit_width // 8))
        writable = False  # this buffer is ours already
    if pa.types.is_boolean(t):
        need("booleans", "Arrow packs booleans into bits; torch wants a byte per value")
        out = torch.from_numpy(array.to_numpy(zero_copy_only=False))
        made.append(Copy(name, "booleans unpacked from bits", out.nbytes))
        return out
    out = torch.from_dlpack(array)
    if writable:
        need("read-only", "Arrow memory must not be written: pass writable=False for a view")
        out = out.clone()
        made.append(Copy(name, "a writable copy of read-only Arrow memory", out.nbytes))
    return out


def batch_to_tensors(
    batch: pa.RecordBatch | pa.Table,
    columns: Sequence[str] | None = None,
    *,
    fill_null: dict[str, float | int] | None = None,
    categories: dict[str, Sequence[str]] | None = None,
    allow_copy: bool = True,
) -> tuple[dict[str, torch.Tensor], list[Copy]]:
    """Each chosen column as a tensor (see `column_to_tensor`), and the list of copies that were needed."""
    names = list(batch.schema.names if columns is None else columns)
    if missing := [n for n in names if n not in batch.schema.names]:
        raise KeyError(f"columns {missing} are not in the batch; it has {batch.schema.names}")
    fill_null, categories = fill_null or {}, categories or {}
    copies: list[Copy] = []
    tensors = {
        n: column_to_tensor(
            batch.column(n),
            name=n,
            fill_null=fill_null.get(n),
            categories=categories.get(n),
            allow_copy=allow_copy,
            copies=copies,
        )
        for n in names
    }
    return tensors, copies
