"""Measuring, as every notebook and benchmark does it: timing, memory, the machine's ceilings, plots, reports.

Machines here are noisy, so the harness reports medians and spreads, never a single run, and `compare`
interleaves two candidates in one run so that drift hits both alike. Claims are then made as ratios,
which survive noise far better than absolute times.

- `timing`: `measure`, `compare`, `Timing`, `Comparison`, `rows`
- `memory`: `measure_memory`, `leak_check`, `rss_bytes`, `process_memory`
- `ceilings`: `machine_ceilings` (copy bandwidth and matmul FLOP/s), `Ceilings`, the roofline
- `plots`: `plot_timings`, `plot_roofline`, `labelled_barh`, `save_figure`
- `report`: `save_results`, `print_targets`
- `load`: `core_load`, how many cores other processes took while something was measured
- `claims`: `at_least`, `at_most`: a notebook's timing claim checked, printed with its margin
"""

from common.bench.ceilings import (
    Ceilings,
    bandwidth_gbs,
    ceilings_row,
    machine_ceilings,
    matmul_gflops,
    measure_bandwidth,
    measure_matmul,
)
from common.bench.claims import Claim, ClaimFailed, at_least, at_most
from common.bench.load import CoreLoad, core_load
from common.bench.memory import (
    LeakReport,
    MemoryUsage,
    ProcessMemory,
    leak_check,
    measure_memory,
    process_memory,
    rss_bytes,
)
from common.bench.plots import labelled_barh, plot_roofline, plot_timings, save_figure
from common.bench.report import print_targets, save_results
from common.bench.timing import MIN_SAMPLE_SECONDS, Comparison, Timing, compare, measure, rows

__all__ = [
    "MIN_SAMPLE_SECONDS",
    "Ceilings",
    "Claim",
    "ClaimFailed",
    "Comparison",
    "CoreLoad",
    "LeakReport",
    "MemoryUsage",
    "ProcessMemory",
    "Timing",
    "at_least",
    "at_most",
    "bandwidth_gbs",
    "ceilings_row",
    "compare",
    "core_load",
    "labelled_barh",
    "leak_check",
    "machine_ceilings",
    "matmul_gflops",
    "measure",
    "measure_bandwidth",
    "measure_matmul",
    "measure_memory",
    "plot_roofline",
    "plot_timings",
    "print_targets",
    "process_memory",
    "rows",
    "rss_bytes",
    "save_figure",
    "save_results",
]
