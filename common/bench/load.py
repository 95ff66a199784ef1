"""How much of the machine other processes took while something was measured.

A thread-scaling claim ("2 threads are faster than 1") only holds for the cores that were free. On a shared
machine another job may hold a core for the whole measurement; the claim's bound should then follow the
cores that were really left, measured over the same window rather than assumed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

# The fields of psutil.cpu_times() that are time a core spent running something (not idle, not waiting on I/O).
_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


@dataclass
class CoreLoad:
    """Cores this process may use, and how many of them other processes kept busy on average (filled on exit)."""

    cores: int
    others_busy: float = 0.0
    seconds: float = 0.0

    @property
    def free(self) -> float:
        """Cores left to this process on average: at least one (our own work runs somewhere)."""
        return max(1.0, self.cores - self.others_busy)


@contextmanager
def core_load() -> Iterator[CoreLoad]:
    """Measure, over the `with` block, the CPU time all other processes used, in cores.

    The machine's busy time minus this process's own (user + system), divided by the wall time.
    """
    load = CoreLoad(cores=_usable_cores())
    machine, ours, started = psutil.cpu_times(), psutil.Process().cpu_times(), time.perf_counter()
    try:
        yield load
    finally:
        machine_after, ours_after = psutil.cpu_times(), psutil.Process().cpu_times()
        load.seconds = time.perf_counter() - started
        busy = sum(getattr(machine_after, f, 0.0) - getattr(machine, f, 0.0) for f in _BUSY_FIELDS)
        own = (ours_after.user + ours_after.system) - (ours.user + ours.system)
        load.others_busy = min(float(load.cores), max(0.0, busy - own) / max(load.seconds, 1e-9))
