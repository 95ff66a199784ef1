"""The feature pipeline of module 06: verification events to model features, in Polars and in pandas.

Why both: the Polars version is a lazy plan that the optimiser rewrites before anything runs (the filter
and the column list are pushed into the file scan, so rows and columns that are not needed are never
read), and it runs on every core and, with the streaming engine, on data larger than memory. The pandas
version is what people would otherwise write, eagerly, one step at a time; a test holds the two equal.

The features, per event of the chosen time window and channels:
- `gap_s`: seconds since the same user's previous attempt (null for a user's first);
- `attempt_no`: how many attempts the user made before this one, in the window;
- `user_events`, `user_devices`, `user_mean_amount`: per-user aggregates over the window, joined back;
- `amount_ratio`: the amount over the user's mean amount;
- `amount_z`: log1p(amount), standardised over the window (mean 0, standard deviation 1).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from common.data.errors import CorruptFile as CorruptFile  # raised here; importable from here
from common.data.synth import CHANNELS, SCHEMA, START

FEATURES = ("gap_s", "attempt_no", "user_events", "user_devices", "user_mean_amount", "amount_ratio", "amount_z")
OUTPUT = ("event_id", "user_id", *FEATURES, "label")
NEEDED = ("event_id", "ts", "user_id", "device_id", "channel", "amount", "label")  # columns the features read


@dataclass(frozen=True)
class Window:
    """Which events the features are computed over: [start, end) and a set of channels."""

    start: datetime = START
    end: datetime = START + timedelta(days=30)
    channels: tuple[str, ...] = ("app", "web")

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} must be after its start {self.start}")
        unknown = sorted(set(self.channels) - set(CHANNELS))
        if unknown or not self.channels:
            raise ValueError(f"channels must be a non-empty subset of {CHANNELS}, got {self.channels}")


@dataclass(frozen=True)
class Source:
    """A Parquet or Arrow IPC file of events, checked against the schema before any plan is built."""

    path: Path
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        path = Path(self.path)
        object.__setattr__(self, "path", path)
        if not path.exists():
            raise FileNotFoundError(f"no events file at {path}")
        suffix = path.suffix.lower()
        kinds = {".parquet": "parquet", ".arrow": "ipc", ".ipc": "ipc", ".feather": "ipc"}
        if suffix not in kinds:
            raise ValueError(f"{path.name}: expected a .parquet or .arrow (Arrow IPC) file, got '{suffix}'")
        object.__setattr__(self, "kind", kinds[suffix])
        try:
            found = self.scan().collect_schema()  # reads the footer only
        except (pl.exceptions.ComputeError, OSError) as exc:
            raise CorruptFile(f"{path}: not a readable {self.kind} file (truncated or corrupt?): {exc}") from exc
        check_schema(found, str(path))

    def scan(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.path) if self.kind == "parquet" else pl.scan_ipc(self.path)


def expected_schema() -> dict[str, pl.DataType]:
    """The Polars types the pipeline reads, from the generator's Arrow schema."""
    empty = pl.from_arrow(SCHEMA.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return dict(empty.schema)


def check_schema(found: pl.Schema | dict[str, pl.DataType], where: str) -> None:
    """A SchemaError naming every needed column that is missing or of another type; nothing is coerced."""
    want = expected_schema()
    problems = []
    for name in NEEDED:
        if name not in found:
            problems.append(f"{name}: missing (expected {want[name]})")
        elif found[name] != want[name]:
            problems.append(f"{name}: expected {want[name]}, found {found[name]}")
    if problems:
        raise pl.exceptions.SchemaError(f"{where} does not have the events schema: " + "; ".join(problems))


def features(events: pl.LazyFrame, window: Window = Window()) -> pl.LazyFrame:
    """The lazy plan: nothing is read until it is collected (or sunk to a file)."""
    selected = events.filter(
        pl.col("ts").is_between(window.start, window.end, closed="left") & pl.col("channel").is_in(window.channels)
    ).select(NEEDED)
    amount = pl.col("amount").cast(pl.Float64)
    per_user = selected.group_by("user_id").agg(
        pl.len().cast(pl.Int64).alias("user_events"),
        pl.col("device_id").drop_nulls().n_unique().cast(pl.Int64).alias("user_devices"),
        amount.mean().alias("user_mean_amount"),
    )
    log_amount = amount.log1p()
    return (
        selected.sort("ts", "event_id")
        .with_columns(
            (pl.col("ts").diff().over("user_id").dt.total_microseconds() / 1e6).alias("gap_s"),
            pl.int_range(pl.len()).over("user_id").cast(pl.Int64).alias("attempt_no"),
            ((log_amount - log_amount.mean()) / log_amount.std()).alias("amount_z"),
        )
        .join(per_user, on="user_id", how="left")
        .with_columns((amount / pl.col("user_mean_amount")).alias("amount_ratio"))
        .select(OUTPUT)
        .sort("event_id")
    )


def features_pandas(path: str | os.PathLike[str], window: Window = Window()) -> pd.DataFrame:
    """The same features as people write them in pandas: read everything, then one eager step at a time."""
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_feather(path)
    df = df[(df["ts"] >= pd.Timestamp(window.start)) & (df["ts"] < pd.Timestamp(window.end))]
    df = df[df["channel"].isin(window.channels)][list(NEEDED)]
    df = df.sort_values(["ts", "event_id"], kind="stable")
    by_user = df.groupby("user_id", sort=False)
    df["gap_s"] = by_user["ts"].diff().dt.total_seconds()
    df["attempt_no"] = by_user.cumcount().astype("int64")
    df["user_events"] = by_user["event_id"].transform("size").astype("int64")
    df["user_devices"] = by_user["device_id"].transform("nunique").astype("int64")
    amount = df["amount"].astype("float64")
    df["user_mean_amount"] = amount.groupby(df["user_id"], sort=False).transform("mean")
    df["amount_ratio"] = amount / df["user_mean_amount"]
    log_amount = np.log1p(amount)
    df["amount_z"] = (log_amount - log_amount.mean()) / log_amount.std()
    return df.sort_values("event_id")[list(OUTPUT)].reset_index(drop=True)


def _plan(source: str | os.PathLike[str], window: Window) -> pl.LazyFrame:
    return features(Source(Path(source)).scan(), window)


def run(source: str | os.PathLike[str], window: Window = Window(), *, streaming: bool = False) -> pl.DataFrame:
    """Collect the features of an events file, with the in-memory or the streaming engine."""
    return _plan(source, window).collect(engine="streaming" if streaming else "in-memory")


def sink(source: str | os.PathLike[str], out: str | os.PathLike[str], window: Window = Window()) -> Path:
    """Write the features to Parquet (.parquet) or Arrow IPC (.arrow) with the streaming engine, so that
    neither the events nor the features need to fit in memory at once."""
    out = Path(out)
    plan = _plan(source, window)
    if out.suffix == ".parquet":
        plan.sink_parquet(out)
    elif out.suffix in (".arrow", ".ipc"):
        plan.sink_ipc(out)
    else:
        raise ValueError(f"{out.name}: expected a .parquet or .arrow output file, got '{out.suffix}'")
    return out


def optimized_plan(source: str | os.PathLike[str], window: Window = Window()) -> str:
    """The plan after Polars' optimiser: where the filter and the column list ended up."""
    return _plan(source, window).explain()


# --- looking inside the plan: what the optimiser did, and what the Parquet reader then read ---------------


def plan(source: str | os.PathLike[str], window: Window = Window()) -> pl.LazyFrame:
    """The features of an events file as a lazy plan, not yet run: to explain, to collect with chosen
    optimisations or engine (`collect(optimizations=pl.QueryOptFlags.none())`), or to sink."""
    return _plan(source, window)


def unoptimized_plan(source: str | os.PathLike[str], window: Window = Window()) -> str:
    """The plan as written, before the optimiser: filters above scans of every column."""
    return _plan(source, window).explain(optimized=False)


def row_groups(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Rows and the min and max `ts` of each row group of a Parquet events file, from its footer: the
    statistics a reader compares a time filter with to skip whole row groups without decoding them."""
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"{path.name}: row groups are a Parquet notion, expected a .parquet file")
    meta = pq.ParquetFile(path).metadata
    ts = meta.schema.to_arrow_schema().get_field_index("ts")
    if ts < 0:
        raise pl.exceptions.SchemaError(f"{path} has no 'ts' column")
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    ts_type = expected_schema()["ts"]
    stats = [g.column(ts).statistics for g in groups]
    if any(s is None or not s.has_min_max for s in stats):
        raise ValueError(f"{path}: some row groups have no min/max statistics for 'ts'; no reader can skip them")
    return pl.DataFrame(
        {
            "row_group": range(len(groups)),
            "rows": [g.num_rows for g in groups],
            "ts_min": [s.min for s in stats],
            "ts_max": [s.max for s in stats],
        },
        schema={"row_group": pl.Int64, "rows": pl.Int64, "ts_min": ts_type, "ts_max": ts_type},
    )


@dataclass(frozen=True)
class ParquetRead:
    """What one Parquet scan of a query read, as Polars' reader logged it."""

    columns_read: int
    columns_total: int
    filtered: bool  # a filter reached the reader (predicate pushdown)
    row_groups_read: int | None  # None when no filter reached the reader: it then reads every row group
    row_groups_total: int | None


_PROJECT = re.compile(r"\[ParquetFileReader\]: project: (\d+) / (\d+),.*predicate: (None|Some)")
_ROW_GROUPS = re.compile(r"\[ParquetFileReader\]: Predicate pushdown: reading (\d+) / (\d+) row groups")


def parquet_reads(query: pl.LazyFrame, **collect: Any) -> tuple[pl.DataFrame, list[ParquetRead]]:
    """Collect `query` (keyword arguments go to `collect`) and report, per Parquet scan, how many columns
    and row groups the reader read: what the pushdowns saved, in the engine's own words, not inferred from
    the plan. Read from Polars' verbose log, so it depends on that log's wording: when it finds no reader
    lines it says so rather than report zero scans."""
    with _fd2_captured() as log, pl.Config(verbose=True):
        result = query.collect(**collect)
    text = "".join(log)
    scans = _PROJECT.findall(text)
    if not scans:
        raise RuntimeError(
            f"no '[ParquetFileReader]: project: ...' lines in Polars {pl.__version__}'s verbose log: "
            "the query scans no Parquet file, or the log's wording changed"
        )
    groups = iter(_ROW_GROUPS.findall(text))  # one line per scan that got a filter, in the order they started
    reads = []
    for read, total, predicate in scans:
        filtered = predicate == "Some"
        rg = next(groups, None) if filtered else None
        reads.append(
            ParquetRead(int(read), int(total), filtered, int(rg[0]) if rg else None, int(rg[1]) if rg else None)
        )
    return result, reads


@contextmanager
def _fd2_captured() -> Iterator[list[str]]:
    """What is written to file descriptor 2 meanwhile, in the list yielded once the block ends. Polars' Rust
    code logs there, below `sys.stderr`, where neither `contextlib.redirect_stderr` nor Jupyter sees it."""
    sys.stderr.flush()
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        try:
            os.dup2(log.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read())
