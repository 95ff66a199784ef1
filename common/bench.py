"""Timing and memory measurement used by every notebook and benchmark.

Machines here are noisy, so the harness reports medians and spreads, never a
single run, and `compare` interleaves two candidates in one run so that drift
(another process, a warming CPU) hits both alike. Claims are then made as
ratios, which survive noise far better than absolute times.
"""

from __future__ import annotations

import functools
import gc
import json
import resource
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from common.device import Device, describe, get_device, thread_count

# A sample shorter than this is dominated by timer and loop overhead; "auto"
# batches calls until one sample lasts at least this long.
MIN_SAMPLE_SECONDS = 1e-3


@dataclass(frozen=True)
class Timing:
    """Seconds per call, one entry per sample, and the statistics a table needs."""

    name: str
    seconds: tuple[float, ...]
    number: int = 1  # calls averaged inside each sample

    def __post_init__(self) -> None:
        if not self.seconds:
            raise ValueError(f"timing {self.name!r} has no samples")

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p10(self) -> float:
        return float(np.percentile(self.seconds, 10))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.seconds, 90))

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: 0.1 means the middle 80 % of samples lie within 10 %."""
        return (self.p90 - self.p10) / self.median

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median_ms": self.median * 1e3,
            "p10_ms": self.p10 * 1e3,
            "p90_ms": self.p90 * 1e3,
            "min_ms": self.min * 1e3,
            "spread": self.spread,
            "samples": len(self.seconds),
            "calls_per_sample": self.number,
        }


@dataclass(frozen=True)
class Comparison:
    """Two timings taken interleaved in one run, and their ratio.

    `speedup` is the median over rounds of baseline/candidate: above 1 the
    candidate is faster. Taking the ratio per round, then the median, cancels
    slow drift that a ratio of two medians would keep.
    """

    baseline: Timing
    candidate: Timing
    ratios: tuple[float, ...]

    @property
    def speedup(self) -> float:
        return statistics.median(self.ratios)

    def row(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.name,
            "candidate": self.candidate.name,
            "baseline_ms": self.baseline.median * 1e3,
            "candidate_ms": self.candidate.median * 1e3,
            "speedup": self.speedup,
        }


def _calls_per_sample(fn: Callable[[], Any], device: Device | None) -> int:
    """Double the calls per sample until a sample lasts MIN_SAMPLE_SECONDS, judged by the fastest of three
    tries: one try stretched by a preemption would otherwise stop the doubling too early."""
    number = 1
    while True:
        fastest = min(_sample(fn, number, device) for _ in range(3)) * number
        if fastest >= MIN_SAMPLE_SECONDS or number >= 1 << 20:
            return number
        number *= 2


def _sample(fn: Callable[[], Any], number: int, device: Device | None) -> float:
    if device is not None:
        device.synchronize()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    if device is not None:
        device.synchronize()
    return (time.perf_counter() - start) / number


def _check_counts(warmup: int, repeat: int, number: int | str) -> None:
    if warmup < 0 or repeat < 1:
        raise ValueError(f"need warmup >= 0 and repeat >= 1, got warmup={warmup}, repeat={repeat}")
    if number != "auto" and (not isinstance(number, int) or number < 1):
        raise ValueError(f"number must be a positive int or 'auto', got {number!r}")


def measure(
    fn: Callable[[], Any],
    *,
    name: str | None = None,
    warmup: int = 3,
    repeat: int = 20,
    number: int | str = "auto",
    device: Device | None = None,
) -> Timing:
    """Time `fn()`: `warmup` untimed calls, then `repeat` samples of `number` calls.

    Pass the `device` the work runs on so GPU work is synchronised before the
    clock stops; on the CPU synchronising is a no-op.
    """
    _check_counts(warmup, repeat, number)
    for _ in range(warmup):
        fn()
    n = _calls_per_sample(fn, device) if number == "auto" else int(number)
    samples = tuple(_sample(fn, n, device) for _ in range(repeat))
    return Timing(name or getattr(fn, "__name__", "fn"), samples, n)


def compare(
    baseline: Callable[[], Any],
    candidate: Callable[[], Any],
    *,
    names: tuple[str, str] = ("baseline", "candidate"),
    warmup: int = 3,
    repeat: int = 20,
    number: int | str = "auto",
    device: Device | None = None,
) -> Comparison:
    """Time two callables interleaved (AB, BA, AB, ...) and return their ratio."""
    _check_counts(warmup, repeat, number)
    for _ in range(warmup):
        baseline()
        candidate()
    if number == "auto":
        na, nb = _calls_per_sample(baseline, device), _calls_per_sample(candidate, device)
    else:
        na = nb = int(number)
    a: list[float] = []
    b: list[float] = []
    for i in range(repeat):
        if i % 2 == 0:
            a.append(_sample(baseline, na, device))
            b.append(_sample(candidate, nb, device))
        else:
            b.append(_sample(candidate, nb, device))
            a.append(_sample(baseline, na, device))
    ratios = tuple(x / y for x, y in zip(a, b, strict=True))
    return Comparison(Timing(names[0], tuple(a), na), Timing(names[1], tuple(b), nb), ratios)


def rows(results: Iterable[Timing | Comparison]) -> list[dict[str, Any]]:
    """Table rows (a list of dicts) for `pandas.DataFrame` or JSON."""
    return [r.row() for r in results]


# --- memory ---------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Highest resident set size this process has reached (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


# --- the machine's two ceilings -------------------------------------------


@dataclass(frozen=True)
class Ceilings:
    """Peak memory bandwidth and peak fp32 matmul rate, measured here.

    Later modules quote results as fractions of these. `ridge` is the arithmetic
    intensity (FLOP per byte moved) above which a kernel is compute-bound.
    """

    bandwidth_gbs: float
    matmul_gflops: float
    device: str
    threads: int
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ridge(self) -> float:
        return self.matmul_gflops / self.bandwidth_gbs

    def attainable_gflops(self, intensity: float) -> float:
        """The roofline: what a kernel of this FLOP/byte can reach at best."""
        return min(self.matmul_gflops, self.bandwidth_gbs * intensity)


def measure_bandwidth(nbytes: int = 256 * 2**20, device: Device | None = None, repeat: int = 10) -> Timing:
    """Time a large copy. Each copy reads and writes `nbytes`, so bandwidth is
    2 * nbytes / time. Both buffers are touched first: a first touch of fresh
    memory pays for page faults, not bandwidth."""
    device = device or get_device()
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device.torch)
    dst = torch.zeros_like(src)
    return measure(
        lambda: dst.copy_(src), name=f"copy {nbytes / 2**20:.0f} MiB", warmup=2, repeat=repeat, number=1, device=device
    )


def measure_matmul(
    n: int = 2048, dtype: torch.dtype = torch.float32, device: Device | None = None, repeat: int = 10
) -> Timing:
    """Time an n x n matmul, which does 2 * n**3 floating-point operations."""
    device = device or get_device()
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device.torch, dtype)
    b = torch.randn(n, n, generator=gen).to(device.torch, dtype)
    out = torch.empty(n, n, dtype=dtype, device=device.torch)
    return measure(
        lambda: torch.mm(a, b, out=out),
        name=f"matmul {n}x{n} {dtype}",
        warmup=2,
        repeat=repeat,
        number=1,
        device=device,
    )


def bandwidth_gbs(timing: Timing, nbytes: int, best: bool = False) -> float:
    """Copy bandwidth (read + write) in GB/s from the median copy time (the fastest with `best`)."""
    return 2 * nbytes / (timing.min if best else timing.median) / 1e9


def matmul_gflops(timing: Timing, n: int, best: bool = False) -> float:
    return 2 * n**3 / (timing.min if best else timing.median) / 1e9


def machine_ceilings(device: str = "auto") -> Ceilings:
    """Measure both ceilings once per process and device; later calls return the cached result.

    A ceiling is a best case, and outside load only ever slows a sample down, so
    it comes from the fastest sample rather than the median.
    """
    return _ceilings(str(get_device(device)))  # cache on the resolved device: "auto" and "cpu" are one entry


@functools.cache
def _ceilings(device: str) -> Ceilings:
    dev = get_device(device)
    nbytes, n = 256 * 2**20, 2048
    copy = measure_bandwidth(nbytes, dev)
    mm = measure_matmul(n, device=dev)
    return Ceilings(
        bandwidth_gbs=bandwidth_gbs(copy, nbytes, best=True),
        matmul_gflops=matmul_gflops(mm, n, best=True),
        device=str(dev),
        threads=thread_count(),
        details={"copy": copy.row(), "matmul": mm.row()},
    )


# --- results: plots and files ---------------------------------------------


def plot_timings(timings: Iterable[Timing], ax: Any = None, title: str | None = None) -> Any:
    """Horizontal bars of median time with p10-p90 whiskers."""
    import matplotlib.pyplot as plt

    timings = list(timings)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(timings)))
    med = np.array([t.median for t in timings]) * 1e3
    lo = med - np.array([t.p10 for t in timings]) * 1e3
    hi = np.array([t.p90 for t in timings]) * 1e3 - med
    ax.barh([t.name for t in timings], med, xerr=[lo, hi], capsize=3, color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("time per call (ms), median with p10-p90")
    if title:
        ax.set_title(title)
    return ax


def plot_roofline(ceilings: Ceilings, points: Mapping[str, tuple[float, float]] | None = None, ax: Any = None) -> Any:
    """The roofline of this machine, with measured kernels as points.

    `points` maps a label to (arithmetic intensity in FLOP/byte, achieved GFLOP/s).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    x = np.logspace(-2, 3, 200)
    ax.loglog(x, [ceilings.attainable_gflops(i) for i in x], color="black", label="roofline")
    ax.axvline(ceilings.ridge, color="grey", ls=":", label=f"ridge {ceilings.ridge:.1f} FLOP/B")
    for label, (intensity, gflops) in (points or {}).items():
        ax.loglog([intensity], [gflops], "o", label=label)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(
        f"roofline: {ceilings.bandwidth_gbs:.1f} GB/s, {ceilings.matmul_gflops:.0f} GFLOP/s ({ceilings.device})"
    )
    ax.legend(fontsize="small")
    return ax


def save_results(path: str | Path, results: list[dict[str, Any]], **meta: Any) -> Path:
    """Write benchmark rows with the machine they were measured on, as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": describe(), "meta": meta, "results": results}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def ceilings_row(c: Ceilings) -> dict[str, Any]:
    row = asdict(c)
    row["ridge_flop_per_byte"] = c.ridge
    return row


# --- benchmark reports ----------------------------------------------------


def print_targets(goals: list[dict[str, Any]], width: int = 55) -> None:
    """One line per target: its value, its bound and met / MISSED. Benchmarks report targets, never assert them."""
    for t in goals:
        bound = (
            f">= {t['at_least']:g}" if "at_least" in t else f"<= {t['at_most']:g}" if "at_most" in t else "no target"
        )
        verdict = "" if t.get("met") is None else "met" if t["met"] else "MISSED"
        print(f"target {t['target']:{width}s} {t['value']:8.2f} ({bound}) {verdict}")


def save_figure(fig: Any, path: str | Path, title: str, quick: bool, summary: str = "") -> None:
    """Title a benchmark's figure (marking a quick run as smoke), write it as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(
        title + (" (quick: a smoke run, not a measurement)" if quick else "") + (f"\n{summary}" if summary else ""),
        fontsize=9,
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def labelled_barh(ax: Any, labels: list[str], values: list[float], *, fmt: str, xlabel: str, title: str) -> None:
    """Horizontal bars, first on top, each with its value written at its end: the benchmarks' usual chart."""
    ax.barh(labels, values, color="tab:blue")
    for i, v in enumerate(values):
        ax.text(v, i, " " + format(v, fmt), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
