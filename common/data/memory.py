"""Where a table's bytes live: the memory regions behind Arrow, Polars, NumPy and torch objects.

Why: "zero-copy" is a claim about addresses, so it is checked with addresses. `regions(obj)` lists the
buffers an object reads from (address, size, and what each one is: values, validity bitmap, string
offsets, ...); `assert_zero_copy(source, view)` passes only if every buffer of `view` lies inside a
buffer of `source`, and otherwise names each one that does not. Tests and notebooks use it instead of
saying so in prose.
"""

from __future__ import annotations

import mmap
import sys
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

# Arrow's buffer roles per layout (arrow.apache.org/docs/format/Columnar.html): what each of `Array.buffers()` is
_ROLES_BY_KIND = {
    "fixed": ("validity", "values"),
    "bool": ("validity", "bits"),
    "binary": ("validity", "offsets", "data"),
    "view": ("validity", "views"),  # string_view: then one data buffer after another
    "list": ("validity", "offsets"),
    "struct": ("validity",),
    "dictionary": ("validity", "indices"),
}


class Region(NamedTuple):  # a tuple, not a dataclass: a table of many batches has thousands of buffers
    """`nbytes` bytes at `address`; `label` says what they are, e.g. "device_id: validity"."""

    label: str
    address: int
    nbytes: int

    @property
    def end(self) -> int:
        return self.address + self.nbytes

    def within(self, other: Region) -> bool:
        return other.address <= self.address and self.end <= other.end

    def __str__(self) -> str:
        return f"{self.label} ({self.nbytes:,} B at {self.address:#x})"


def _kind(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_dictionary(t):
        return "dictionary"
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return "view"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        return "list"
    if pa.types.is_struct(t):
        return "struct"
    return "fixed"


def _roles(t: pa.DataType) -> tuple[str, ...]:
    roles = _ROLES_BY_KIND[_kind(t)]
    return roles + ("data",) * 64 if _kind(t) == "view" else roles


def _arrow_regions(array: pa.Array, name: str, roles: tuple[str, ...] | None = None) -> list[Region]:
    """Every non-empty buffer of `array` and its children. Children's buffers follow their parent's in
    `Array.buffers()`; roles are named for the top level and numbered below it."""
    roles = _roles(array.type) if roles is None else roles
    return [
        Region(f"{name}: {roles[i] if i < len(roles) else f'buffer {i}'}", buf.address, buf.size)
        for i, buf in enumerate(array.buffers())
        if buf is not None and buf.size  # no validity bitmap (no nulls), or an empty buffer
    ]


def _numpy_region(a: np.ndarray, label: str) -> list[Region]:
    if a.size == 0:
        return []
    lo = sum((n - 1) * s for n, s in zip(a.shape, a.strides, strict=True) if s < 0)
    hi = sum((n - 1) * s for n, s in zip(a.shape, a.strides, strict=True) if s > 0) + a.itemsize
    return [Region(label, a.__array_interface__["data"][0] + lo, hi - lo)]


def regions(obj: Any, name: str | None = None) -> list[Region]:
    """The memory `obj` reads from. Accepts Arrow buffers, arrays, chunked arrays, record batches and
    tables; Polars series and data frames; NumPy arrays; torch tensors; mmap, bytes, bytearray and
    memoryview objects."""
    if isinstance(obj, pa.Buffer):
        return [Region(name or "buffer", obj.address, obj.size)] if obj.size else []
    if isinstance(obj, pa.Array):
        return _arrow_regions(obj, name or "array")
    if isinstance(obj, pa.ChunkedArray):
        label, roles = name or "column", _roles(obj.type)
        many = obj.num_chunks > 1
        return [
            r for i, c in enumerate(obj.chunks) for r in _arrow_regions(c, f"{label}[{i}]" if many else label, roles)
        ]
    if isinstance(obj, pa.RecordBatch | pa.Table):
        return [r for field, col in zip(obj.schema, obj.columns, strict=True) for r in regions(col, field.name)]
    if isinstance(obj, pl.Series):
        # Polars hands its own buffers to Arrow for numeric columns (tests hold this equal to
        # `to_numpy(allow_copy=False)`); for strings it converts its string views, so a copy shows.
        return regions(obj.to_arrow(), name or obj.name or "series")
    if isinstance(obj, pl.DataFrame):
        return [r for s in obj.iter_columns() for r in regions(s)]
    if isinstance(obj, np.ndarray):
        return _numpy_region(obj, name or "ndarray")
    if isinstance(obj, mmap.mmap | bytes | bytearray | memoryview):
        view = memoryview(obj)
        return _numpy_region(np.frombuffer(view, dtype=np.uint8), name or type(obj).__name__) if view.nbytes else []
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported: no import here
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            raise ValueError(f"{name or 'tensor'} is on {obj.device}: addresses are compared for CPU memory only")
        if obj.numel() == 0:
            return []
        lo = sum((n - 1) * s for n, s in zip(obj.shape, obj.stride(), strict=True) if s < 0) * obj.element_size()
        hi = (sum((n - 1) * s for n, s in zip(obj.shape, obj.stride(), strict=True) if s > 0) + 1) * obj.element_size()
        return [Region(name or "tensor", obj.data_ptr() + lo, hi - lo)]
    raise TypeError(
        f"cannot list the memory of a {type(obj).__name__}: expected an Arrow, Polars, NumPy or torch object, "
        "an mmap, bytes, bytearray or memoryview"
    )


def _addresses(obj: Any) -> list[tuple[int, int]]:
    """(address, size) of every non-empty buffer: `regions` without the labels, fast enough to check a
    table of thousands of batches in a few milliseconds."""
    if isinstance(obj, pa.Table | pa.RecordBatch | pa.ChunkedArray | pa.Array):
        columns = obj.columns if isinstance(obj, pa.Table | pa.RecordBatch) else [obj]
        chunks = [c for col in columns for c in (col.chunks if isinstance(col, pa.ChunkedArray) else [col])]
        return [(b.address, b.size) for c in chunks for b in c.buffers() if b is not None and b.size]
    return [(r.address, r.nbytes) for r in regions(obj)]


def copied_regions(source: Any, view: Any) -> list[Region]:
    """The buffers of `view` that do not lie inside any buffer of `source`: what a conversion copied."""
    inside = [(r.address, r.end) for r in regions(source, "source")]

    def outside(address: int, nbytes: int) -> bool:
        return not any(lo <= address and address + nbytes <= hi for lo, hi in inside)

    if not any(outside(a, n) for a, n in _addresses(view)):
        return []
    return [r for r in regions(view, "view") if outside(r.address, r.nbytes)]


def shares_memory(a: Any, b: Any) -> bool:
    """True if any buffer of `a` overlaps any buffer of `b`."""
    return any(x.address < y.end and y.address < x.end for x in regions(a) for y in regions(b))


def assert_zero_copy(source: Any, view: Any) -> None:
    """AssertionError, naming each buffer and its address, unless every buffer of `view` lies inside
    `source`'s memory: `view` was made without copying a byte of data."""
    found = regions(view, "view")
    if not found:
        raise ValueError("the view has no data buffers (it is empty), so there is nothing to compare")
    if copied := copied_regions(source, view):
        where = ", ".join(str(r) for r in regions(source, "source")[:6])
        raise AssertionError(
            f"{len(copied)} of {len(found)} buffers were copied: " + "; ".join(str(r) for r in copied) + f". "
            f"The source's memory: {where}"
        )


def resident_by_kind() -> dict[str, int] | None:
    """This process's resident memory by kind, in bytes (Linux; None elsewhere): `anon` is private memory
    (copies land here), `file` is pages of mapped files, `shmem` pages of shared memory."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith("Rss"))
    except OSError:
        return None
    kb = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
    return {"anon": kb.get("RssAnon", 0), "file": kb.get("RssFile", 0), "shmem": kb.get("RssShmem", 0)}
