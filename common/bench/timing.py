"""Timing: warm-up, repeats, medians and spreads, and two candidates interleaved in one run.

Machines here are noisy, so a timing is many samples, never a single run, and `compare` interleaves two
candidates so that drift (another process, a warming CPU) hits both alike: claims are made as ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.device import Device

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
    return Timing(name or str(getattr(fn, "__name__", "fn")), samples, n)


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
