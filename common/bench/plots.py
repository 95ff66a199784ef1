"""The charts notebooks and benchmarks share: timings with their spread, the roofline, labelled bars."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.bench.ceilings import Ceilings
from common.bench.timing import Timing


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


def labelled_barh(ax: Any, labels: list[str], values: list[float], *, fmt: str, xlabel: str, title: str) -> None:
    """Horizontal bars, first on top, each with its value written at its end: the benchmarks' usual chart."""
    ax.barh(labels, values, color="tab:blue")
    for i, v in enumerate(values):
        ax.text(v, i, " " + format(v, fmt), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)


def save_figure(fig: Any, path: str | Path, title: str, quick: bool, summary: str = "") -> None:
    """Title a benchmark's figure (marking a quick run as smoke), write it as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(
        title + (" (quick: a smoke run, not a measurement)" if quick else "") + (f"\n{summary}" if summary else ""),
        fontsize=9,
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
