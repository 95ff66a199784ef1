"""The data path (module 06), three comparisons in one run, each against what people would otherwise write.

Pipeline: `pipeline.run` (the lazy Polars plan over a Parquet file of `synth` events: window filter,
per-user gaps and attempt numbers, joined per-user aggregates, a standardised log amount) against
`pipeline.features_pandas` (the same features in pandas, held equal here and in the tests), at 1e7 rows,
rounds interleaved. The streaming engine is timed beside them (no target).

Handoff: a 1 GiB `synth` table given to another, already running process (`transport.Consumer`, started
with `spawn`) three ways: pickled through a `multiprocessing.Queue`; by the name of a shared-memory block
holding it as an Arrow IPC stream (`SharedTable`); by the path of an uncompressed Arrow IPC file that the
consumer memory-maps. Each time is from the producer's send to the consumer's answer, once the consumer
has a usable table (its row count); the same with the consumer also summing one column (80 MB) is
reported beside it. Putting the table into shared memory or the file in the first place is one copy the
producer pays once, however many consumers read it: reported, not part of the handoff.

Into torch: rows per second from a features file (the pipeline's output for 2e6 events, Parquet and Arrow
IPC) into float32 batches of 65,536 rows, `feed.arrow_batches` (columns through DLPack, one casting
copy) against `feed.naive_batches` (pandas, then Python lists, then `torch.tensor`), reading the file
included; with the small MLP run on every batch beside it.

Targets are printed as ratios with met / MISSED, never asserted: Polars >= 5x pandas at 1e7 rows; the
handoff by shared memory or memory map >= 100x the pickle queue; the Arrow path >= 10x the naive one.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl
import pyarrow as pa
from polars.testing import assert_frame_equal

from common import bench
from common.data import feed, pipeline, synth
from common.data.transport import Consumer, SharedTable

PIPELINE_TARGET, HANDOFF_TARGET, TORCH_TARGET = 5.0, 100.0, 10.0


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rounds(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Each callable once per round, in a rotating order, after one untimed call each."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeat):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            gc.collect()
            times[n].append(_seconds(fns[n]))
    return times


def _row(part: str, name: str, seconds: list[float], **extra: Any) -> dict[str, Any]:
    return {"part": part, "name": name, "median_s": statistics.median(seconds), "min_s": min(seconds), **extra}


def pipeline_vs_pandas(quick: bool, folder: Path) -> tuple[list[dict[str, Any]], float]:
    rows = 200_000 if quick else 10_000_000
    events = synth.write_parquet(folder / "events.parquet", rows)
    ours, theirs = pipeline.run(events), pipeline.features_pandas(events)
    assert_frame_equal(ours, pl.from_pandas(theirs), check_dtypes=False)  # the same output, first
    del ours, theirs
    times = _rounds(
        {
            "polars (lazy, in memory)": lambda: pipeline.run(events),
            "polars (streaming engine)": lambda: pipeline.run(events, streaming=True),
            "pandas": lambda: pipeline.features_pandas(events),
        },
        repeat=2 if quick else 3,
    )
    out = [_row("pipeline", n, t, events=rows) for n, t in times.items()]
    ratio = statistics.median(times["pandas"]) / statistics.median(times["polars (lazy, in memory)"])
    for r in out:
        print(f"pipeline {r['name']:30s} {r['median_s']:7.2f} s ({rows:,} events)")
    return out, ratio


def handoff(quick: bool, folder: Path) -> tuple[list[dict[str, Any]], float]:
    per_row = synth.table(synth.BLOCK_ROWS).nbytes / synth.BLOCK_ROWS
    rows = int((32 << 20 if quick else 1 << 30) / per_row)
    table = synth.table(rows)
    path = synth.write_ipc(folder / "handoff.arrow", rows)
    repeat = 2 if quick else 3
    out: list[dict[str, Any]] = []
    with Consumer() as consumer:
        t0 = time.perf_counter()
        shared = SharedTable(table)
        out.append(_row("handoff", "publish: copy into shared memory (once)", [time.perf_counter() - t0]))
        with shared:
            ways = {
                "pickle through a Queue": lambda column: consumer.send_pickled(table, column),
                "shared memory (name)": lambda column: consumer.send_shared(shared, column),
                "memory-mapped IPC file (path)": lambda column: consumer.send_file(path, column),
            }
            medians = {}
            for column in (None, "amount"):
                receipts: dict[str, list[Any]] = {n: [] for n in ways}
                for send in ways.values():
                    send(column)  # warm: the first pickle grows the consumer's heap, the first map faults the file
                for _ in range(repeat):
                    for n, send in ways.items():
                        gc.collect()
                        receipts[n].append(send(column))
                what = "usable table" if column is None else "usable table + sum of one column"
                for n, rs in receipts.items():
                    out.append(
                        _row(
                            "handoff",
                            f"{n}: {what}",
                            [r.seconds for r in rs],
                            table_bytes=table.nbytes,
                            consumer_open_ms=statistics.median(r.open_seconds for r in rs) * 1e3,
                            consumer_copied_bytes=statistics.median(r.copied_bytes for r in rs),
                            consumer_mapped_growth=statistics.median(r.mapped_growth or 0 for r in rs),
                        )
                    )
                    medians[(n, column)] = statistics.median(r.seconds for r in rs)
    for r in out:
        print(f"handoff {r['name']:70s} {r['median_s'] * 1e3:9.1f} ms")
    pickle = medians[("pickle through a Queue", None)]
    ratio = min(pickle / medians[(n, None)] for n in ways if not n.startswith("pickle"))
    return out, ratio


def into_torch(quick: bool, folder: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    events = synth.write_parquet(folder / "feed-events.parquet", 200_000 if quick else 2_000_000)
    sources = {suffix: pipeline.sink(events, folder / f"features{suffix}") for suffix in (".parquet", ".arrow")}
    model = feed.mlp()
    out: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for suffix, path in sources.items():
        paths = {
            "arrow batches": lambda p=path: feed.arrow_batches(p),
            "pandas -> lists -> tensor": lambda p=path: feed.naive_batches(p),
        }
        runs: dict[str, list[feed.Throughput]] = {}
        for with_model in (False, True):
            for name, make in paths.items():
                key = f"{name}{' + MLP' if with_model else ''}"
                feed.drive(make(), model if with_model else None)  # warm: torch's first kernels, the page cache
                runs[key] = [feed.drive(make(), model if with_model else None) for _ in range(2 if quick else 3)]
        for key, rs in runs.items():
            rate = statistics.median(r.rows_per_s for r in rs)
            out.append(
                {"part": "into torch", "name": f"{suffix[1:]}: {key}", "rows_per_s": rate, "rows": rs[0].rows}
                | {"copies": list(rs[0].copies)}
            )
            print(f"torch {suffix[1:]:8s} {key:38s} {rate / 1e6:8.2f} M rows/s")
        rates = {r["name"]: r["rows_per_s"] for r in out}
        ratios[suffix] = rates[f"{suffix[1:]}: arrow batches"] / rates[f"{suffix[1:]}: pandas -> lists -> tensor"]
    return out, ratios


def targets(ratios: dict[str, float]) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = [
        {"target": "polars / pandas, feature pipeline at 1e7 rows", "value": ratios["pipeline"], "at_least": 5.0},
        {
            "target": "pickle queue / shared memory or mmap, 1 GiB handoff",
            "value": ratios["handoff"],
            "at_least": 100.0,
        },
        {"target": "arrow / naive rows per s into torch, Parquet", "value": ratios[".parquet"], "at_least": 10.0},
        {"target": "arrow / naive rows per s into torch, Arrow IPC", "value": ratios[".arrow"], "at_least": 10.0},
    ]
    for g in goals:
        g["met"] = g["value"] >= g["at_least"]
    return goals


def plot(rows: list[dict[str, Any]], goals: list[dict[str, Any]], path: Path, quick: bool) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    for ax, part, key, scale, unit in (
        (axes[0], "pipeline", "median_s", 1, "s (median)"),
        (axes[1], "handoff", "median_s", 1e3, "ms (median, log scale)"),
        (axes[2], "into torch", "rows_per_s", 1e-6, "M rows/s (median, log scale)"),
    ):
        part_rows = [r for r in rows if r["part"] == part]
        values = [r[key] * scale for r in part_rows]
        bench.labelled_barh(ax, [r["name"] for r in part_rows], values, fmt=".3g", xlabel=unit, title=part)
        ax.tick_params(axis="y", labelsize=7)
        if part != "pipeline":
            ax.set_xscale("log")
    summary = "; ".join(f"{g['target']}: {g['value']:.1f}x" for g in goals)
    bench.save_figure(fig, path, "data path", quick, summary)


def run(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hpai-data-bench-") as tmp:
        folder = Path(tmp)
        pipe_rows, pipe_ratio = pipeline_vs_pandas(quick, folder)
        hand_rows, hand_ratio = handoff(quick, folder)
        torch_rows, torch_ratios = into_torch(quick, folder)
    goals = targets({"pipeline": pipe_ratio, "handoff": hand_ratio, **torch_ratios})
    bench.print_targets(goals)
    rows = pipe_rows + hand_rows + torch_rows
    bench.save_results(
        out / "data.json",
        rows,
        benchmark="data",
        quick=quick,
        targets=goals,
        arrow_version=pa.__version__,
        polars_version=pl.__version__,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )
    plot(rows, goals, out / "data.png", quick)
    return rows
