"""What a warp's memory accesses cost: global-memory sectors (coalescing) and shared-memory bank conflicts.

A GPU serves the 32 threads of a warp together. A global load or store of the warp is cut into 32-byte
sectors: 32 threads reading 32 neighbouring float32 touch 4 sectors (coalesced), the same threads reading with a
stride of 32 floats touch 32, eight times the traffic for the same useful bytes. Shared memory is split into 32
banks of 4-byte words (word w is in bank w % 32); a bank serves one word per cycle, so a warp whose threads
touch n different words of one bank is replayed n times (an n-way bank conflict); threads reading the same word
get it broadcast. ([CUDA C++ Best Practices Guide](https://docs.nvidia.com/cuda/cuda-c-best-practices-guide/),
"Coalesced Access to Global Memory" and "Shared Memory and Memory Banks".)

`trace_launch` runs a Numba CUDA kernel on Numba's simulator (NUMBA_ENABLE_CUDASIM=1) with its array arguments
and its `cuda.shared.array`s wrapped, so that every element a thread reads or writes is recorded with the
thread's block and index. A thread's k-th access to an array is taken to be the same instruction as the k-th of
the other threads of its warp (true for kernels without divergent branches around memory accesses, like the
teaching kernels here). Keep launches tiny: the simulator runs every CUDA thread as a Python thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WARP = 32
SECTOR_BYTES = 32  # the unit a global access is served in
BANKS = 32  # shared-memory banks of 4-byte words
BANK_WORD_BYTES = 4


@dataclass(frozen=True)
class WarpAccess:
    """One memory instruction of one warp: the byte offsets its threads touched in one array."""

    array: str
    space: str  # "global" or "shared"
    kind: str  # "load" or "store"
    block: tuple[int, int, int]
    warp: int
    step: int  # the how-many-th access of each thread to this array
    offsets: tuple[int, ...]  # byte offset of each active thread's element, in thread order
    itemsize: int

    @property
    def sectors(self) -> int:
        """32-byte sectors the warp's access touches: what it costs in global-memory traffic."""
        return len({o // SECTOR_BYTES for o in self.offsets})

    @property
    def ideal_sectors(self) -> int:
        """Sectors the same distinct elements would take if they were contiguous and aligned."""
        useful = len(set(self.offsets)) * self.itemsize
        return -(-useful // SECTOR_BYTES)

    @property
    def bank_conflict_degree(self) -> int:
        """Replays a shared access needs: the most distinct 4-byte words any one bank is asked for (1: none)."""
        words_per_bank: dict[int, set[int]] = defaultdict(set)
        for offset in self.offsets:
            word = offset // BANK_WORD_BYTES
            words_per_bank[word % BANKS].add(word)
        return max((len(w) for w in words_per_bank.values()), default=0)


@dataclass
class AccessTrace:
    """Every element access of one traced launch, by thread; `warp_accesses()` groups them by instruction."""

    block_dim: tuple[int, int, int]
    records: list[tuple[str, str, str, tuple[int, int, int], tuple[int, int, int], int, int, int]] = field(
        default_factory=list
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _steps: Counter[tuple[Any, ...]] = field(default_factory=Counter, repr=False)

    def record(self, array: str, space: str, kind: str, offset: int, itemsize: int) -> None:
        me: Any = threading.current_thread()  # the simulator's BlockThread, which carries blockIdx and threadIdx
        block, thread = tuple(me.blockIdx), tuple(me.threadIdx)
        with self._lock:
            key = (array, kind, block, thread)
            step = self._steps[key]
            self._steps[key] += 1
            self.records.append((array, space, kind, block, thread, step, offset, itemsize))

    def _warp_of(self, thread: tuple[int, int, int]) -> tuple[int, int]:
        x, y, z = thread
        bx, by, _ = self.block_dim
        linear = x + y * bx + z * bx * by
        return linear // WARP, linear

    def warp_accesses(self, array: str | None = None, kind: str | None = None) -> list[WarpAccess]:
        """The recorded accesses grouped into warp instructions, optionally of one array and kind."""
        groups: dict[tuple[Any, ...], list[tuple[int, int]]] = defaultdict(list)
        itemsizes: dict[tuple[Any, ...], int] = {}
        for name, space, k, block, thread, step, offset, itemsize in self.records:
            if (array is None or name == array) and (kind is None or k == kind):
                warp, lane_order = self._warp_of(thread)
                key = (name, space, k, block, warp, step)
                groups[key].append((lane_order, offset))
                itemsizes[key] = itemsize
        return [
            WarpAccess(name, space, k, block, warp, step, tuple(o for _, o in sorted(lanes)), itemsizes[key])
            for key, lanes in sorted(groups.items())
            for name, space, k, block, warp, step in [key]
        ]

    def global_sectors(self, array: str | None = None) -> tuple[int, int]:
        """(sectors touched, sectors the same elements would need if contiguous), over global accesses."""
        accesses = [a for a in self.warp_accesses(array) if a.space == "global"]
        return sum(a.sectors for a in accesses), sum(a.ideal_sectors for a in accesses)

    def worst_bank_conflict(self, array: str | None = None) -> int:
        """The largest bank-conflict degree of any shared-memory warp access (1: conflict-free)."""
        return max((a.bank_conflict_degree for a in self.warp_accesses(array) if a.space == "shared"), default=0)


class TracedArray:
    """A NumPy array that records the byte offset of every element a simulated CUDA thread reads or writes."""

    def __init__(self, data: np.ndarray, name: str, space: str, trace: AccessTrace) -> None:
        self.data, self.name, self.space, self.trace = data, name, space, trace
        self.shape, self.dtype, self.size, self.ndim = data.shape, data.dtype, data.size, data.ndim

    def _offset(self, index: Any) -> int:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) != self.ndim or not all(isinstance(i, (int, np.integer)) for i in index):
            raise TypeError(f"{self.name}: trace_launch records single-element indexing only, got {index!r}")
        flat = int(np.ravel_multi_index(tuple(int(i) for i in index), self.shape))
        return flat * self.dtype.itemsize

    def __getitem__(self, index: Any) -> Any:
        self.trace.record(self.name, self.space, "load", self._offset(index), self.dtype.itemsize)
        return self.data[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self.trace.record(self.name, self.space, "store", self._offset(index), self.dtype.itemsize)
        self.data[index] = value

    def __len__(self) -> int:
        return len(self.data)


@contextlib.contextmanager
def _traced_shared_arrays(trace: AccessTrace) -> Iterator[None]:
    """Wrap what `cuda.shared.array` returns in the simulator, for the duration of one launch."""
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    original: Any = FakeCUDAShared.array
    wrapped: dict[int, TracedArray] = {}

    def array(self: Any, shape: Any, dtype: Any, alignment: Any = None) -> TracedArray:
        data = original(self, shape, dtype, alignment)
        # one allocation per call site and block: every thread of the block must get the same wrapper
        return wrapped.setdefault(id(data), TracedArray(data, f"shared{len(wrapped)}", "shared", trace))

    setattr(FakeCUDAShared, "array", array)  # noqa: B010  # patched for one launch, restored below
    try:
        yield
    finally:
        setattr(FakeCUDAShared, "array", original)  # noqa: B010


def trace_launch(
    kernel: Any, blocks: int | tuple[int, ...], threads: int | tuple[int, ...], **args: Any
) -> AccessTrace:
    """Launch `kernel[blocks, threads](*args.values())` on the simulator and record every element access.

    Arguments are passed by keyword, in the kernel's order, so the trace can name the arrays; NumPy arrays are
    traced and read and written in place, scalars passed as they are. Needs
    NUMBA_ENABLE_CUDASIM=1 (set before numba is imported): only the simulator runs kernels as Python.
    """
    from numba.core import config

    if not config.ENABLE_CUDASIM:  # type: ignore[attr-defined]  # numba's config sets its names at import
        raise RuntimeError("trace_launch runs kernels on Numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 first")
    dims = tuple(threads) if isinstance(threads, tuple) else (threads,)
    block_dim = (*dims, 1, 1)[:3]
    if np.prod(block_dim) * np.prod(blocks) > 4096:
        raise ValueError(f"keep traced launches tiny (at most 4096 threads), got {blocks} x {threads}")
    trace = AccessTrace(block_dim)  # type: ignore[arg-type]  # a 3-tuple of ints, sliced above
    traced = [TracedArray(a, name, "global", trace) if isinstance(a, np.ndarray) else a for name, a in args.items()]
    with _traced_shared_arrays(trace):
        kernel[blocks, threads](*traced)
    return trace
