"""This machine's two ceilings: copy bandwidth and fp32 matmul rate."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common import bench


def run(out: Path, quick: bool = False) -> dict:
    c = bench.machine_ceilings()
    row = bench.ceilings_row(c)
    bench.save_results(out / "ceilings.json", [row], benchmark="ceilings")
    ax = bench.plot_roofline(c)
    ax.figure.savefig(out / "ceilings.png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    print(
        f"copy bandwidth {c.bandwidth_gbs:.1f} GB/s, fp32 matmul {c.matmul_gflops:.0f} GFLOP/s, ridge {c.ridge:.1f} FLOP/B"
    )
    return row
