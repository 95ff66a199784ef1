"""Memory: what one call allocates, what many create/use/close cycles leave behind, what a process owns."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return psutil.Process().memory_info().rss


@dataclass(frozen=True)
class MemoryUsage:
    """What one call allocated: the Python/NumPy peak seen by tracemalloc, and
    the change in resident memory (which also sees torch's and C allocations)."""

    traced_peak_bytes: int
    rss_delta_bytes: int

    def row(self) -> dict[str, float]:
        return {"traced_peak_MiB": self.traced_peak_bytes / 2**20, "rss_delta_MiB": self.rss_delta_bytes / 2**20}


def measure_memory(fn: Callable[[], Any]) -> tuple[Any, MemoryUsage]:
    """Call `fn()` once and return its result with the memory it took.

    tracemalloc sees NumPy and Python allocations but not torch's allocator; the
    RSS delta sees everything the process kept, but not memory freed before return.
    """
    gc.collect()
    rss_before = rss_bytes()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return result, MemoryUsage(peak - base, rss_bytes() - rss_before)


@dataclass(frozen=True)
class LeakReport:
    """Threads and resident memory before and after many create/use/close cycles."""

    cycles: int
    threads_before: int
    threads_after: int
    rss_before_bytes: int
    rss_after_bytes: int
    seconds: float

    @property
    def thread_growth(self) -> int:
        return self.threads_after - self.threads_before

    @property
    def rss_growth_bytes(self) -> int:
        return self.rss_after_bytes - self.rss_before_bytes

    def row(self) -> dict[str, float]:
        return {
            "cycles": self.cycles,
            "thread_growth": self.thread_growth,
            "rss_growth_KiB": self.rss_growth_bytes / 1024,
            "rss_growth_per_cycle_B": self.rss_growth_bytes / self.cycles,
            "ms_per_cycle": self.seconds / self.cycles * 1e3,
        }


def leak_check(cycle: Callable[[], Any], cycles: int = 1000, settle: int = 50) -> LeakReport:
    """Run `cycle()` many times and report what it left behind.

    The first `settle` cycles are not counted: allocator pools, import caches
    and lazily created thread pools reach their steady size there, and that
    one-off growth is not a leak.
    """
    if cycles < 1 or settle < 0:
        raise ValueError(f"need cycles >= 1 and settle >= 0, got cycles={cycles}, settle={settle}")
    for _ in range(settle):
        cycle()
    gc.collect()
    threads, rss = threading.active_count(), rss_bytes()
    start = time.perf_counter()
    for _ in range(cycles):
        cycle()
    seconds = time.perf_counter() - start
    gc.collect()
    return LeakReport(cycles, threads, threading.active_count(), rss, rss_bytes(), seconds)


@dataclass(frozen=True)
class ProcessMemory:
    """What a process holds, counted three ways, and how much of one mapped file it holds.

    RSS counts every resident page, shared ones too, so RSS summed over processes counts shared pages
    several times; PSS splits each shared page between its sharers; USS counts only the pages no other
    process has: what the process would give back if it exited.
    """

    rss_bytes: int
    pss_bytes: int
    uss_bytes: int
    file_resident_bytes: int = 0
    file_shared_bytes: int = 0

    def row(self, file: str = "file") -> dict[str, float]:
        """A table row in MiB; `file` names the mapped file's two columns (e.g. "weights")."""
        return {
            "RSS (MiB)": self.rss_bytes / 2**20,
            "PSS (MiB)": self.pss_bytes / 2**20,
            "USS (MiB)": self.uss_bytes / 2**20,
            f"{file} resident (MiB)": self.file_resident_bytes / 2**20,
            f"{file} shared (MiB)": self.file_shared_bytes / 2**20,
        }


def process_memory(process: psutil.Process | int | None = None, mapped_file: str | None = None) -> ProcessMemory:
    """RSS, PSS and USS of a process (this one by default, or a pid), and the resident and shared bytes of
    the mapped file whose path ends with `mapped_file` (a model's weights, say). Linux only: PSS and USS
    come from /proc/PID/smaps."""
    proc = process if isinstance(process, psutil.Process) else psutil.Process(process)
    full = proc.memory_full_info()
    resident = shared = 0
    if mapped_file is not None:
        for m in proc.memory_maps(grouped=True):
            if m.path.endswith(mapped_file):
                resident += m.rss
                shared += m.shared_clean + m.shared_dirty
    return ProcessMemory(full.rss, full.pss, full.uss, resident, shared)
