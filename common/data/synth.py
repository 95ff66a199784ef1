"""Deterministic synthetic identity-verification events: the table module 06 works on.

Why synthetic: nothing may download at run time, and a seeded generator gives the same table on every
machine, at any size from 1e5 to 1e8 rows. Rows are made in fixed blocks of `BLOCK_ROWS`, each from its own
random stream (seed, block index), so a table is built block by block in bounded memory, any block can be
made on its own, and the first k rows of a larger table are exactly the table of k rows.

One row is one verification attempt: a user presents a document and a selfie from a device, a model
scores the face match and the liveness, and a label says whether the attempt was later found fraudulent.
The label depends on the scores, the amount and a new device, so that features have something to find.
`device_id` is null for about 4% of rows (attempts from an unregistered browser) and `country` is a
string column: the nulls and strings that later notebooks show cost copies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

BLOCK_ROWS = 1 << 16  # rows made from one random stream
PROGRESS_FROM_ROWS = 5_000_000  # writers show a progress bar from this size on (or when asked)
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_S = 30 * 24 * 3600  # the events cover 30 days, in event_id order
EVENTS_PER_USER = 20  # on average: users = rows / 20 (at least 100)
DEVICES_PER_USER = 2
COUNTRIES = ("GB", "DE", "FR", "ES", "IT", "NL", "PL", "US", "BR", "IN", "NG", "PH")
COUNTRY_WEIGHTS = np.array([18, 14, 12, 9, 8, 6, 6, 10, 5, 6, 3, 3], dtype=np.float64) / 100
CHANNELS = ("app", "web", "kiosk")
CHANNEL_WEIGHTS = np.array([0.62, 0.33, 0.05])
NULL_DEVICE_RATE = 0.04

SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.int32(), nullable=False),
        pa.field("device_id", pa.int32(), nullable=True),
        pa.field("country", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("amount", pa.float32(), nullable=False),
        pa.field("match_score", pa.float32(), nullable=False),
        pa.field("liveness_score", pa.float32(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
    ]
)


def _check_rows(n_rows: object) -> int:
    if isinstance(n_rows, bool) or not isinstance(n_rows, int | np.integer):
        raise TypeError(f"n_rows must be an integer, got {type(n_rows).__name__}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    return int(n_rows)


def _users(n_rows: int) -> int:
    return max(100, n_rows // EVENTS_PER_USER)


def _strings(codes: np.ndarray, values: tuple[str, ...]) -> pa.Array:
    """A plain string column from codes into `values` (decoded: later notebooks show what strings cost)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int8)), list(values)).cast(pa.string())


def block(index: int, n_rows: int, seed: int = 0) -> pa.RecordBatch:
    """Block `index` (rows index*BLOCK_ROWS onwards) of the table of `n_rows` rows: a pure function of its
    arguments. The table's size enters only through the number of users and the time span per row."""
    n_rows = _check_rows(n_rows)
    first = index * BLOCK_ROWS
    if index < 0 or (first >= n_rows and n_rows):
        raise ValueError(f"block {index} is outside a table of {n_rows} rows ({BLOCK_ROWS} rows a block)")
    rng = np.random.default_rng([seed, index])
    rows = BLOCK_ROWS  # always draw a whole block, then cut: the first k rows do not depend on n_rows
    event_id = np.arange(first, first + rows, dtype=np.int64)
    # timestamps increase with event_id over the span, with jitter that keeps them sorted within a block
    step_us = SPAN_S * 1_000_000 / max(n_rows, 1)
    jitter = np.sort(rng.random(rows))
    ts_us = (event_id + jitter) * step_us + START.timestamp() * 1_000_000
    users = _users(n_rows)
    # a few users do most of the attempts (Zipf-like): the group-by and window features see skew
    user_id = np.minimum(rng.zipf(1.3, rows) - 1, users - 1).astype(np.int32)
    user_id = ((user_id.astype(np.int64) * 2_654_435_761 + 12345) % users).astype(np.int32)  # spread ids
    new_device = rng.random(rows) < 0.08
    device_slot = np.where(new_device, DEVICES_PER_USER + rng.integers(0, 1000, rows), rng.integers(0, 2, rows))
    device_id = (user_id.astype(np.int64) * 1009 + device_slot) % 2_000_000_000
    device_null = rng.random(rows) < NULL_DEVICE_RATE
    country = rng.choice(len(COUNTRIES), rows, p=COUNTRY_WEIGHTS)
    channel = rng.choice(len(CHANNELS), rows, p=CHANNEL_WEIGHTS)
    amount = np.round(rng.lognormal(3.5, 1.2, rows), 2).astype(np.float32)
    match = np.clip(rng.beta(9.0, 1.4, rows), 0, 1)
    liveness = np.clip(rng.beta(7.0, 1.2, rows), 0, 1)
    logit = -4.4 + 5.0 * (0.75 - match) + 3.0 * (0.7 - liveness) + 0.35 * np.log1p(amount) / 3 + 1.6 * new_device
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    keep = slice(0, min(rows, n_rows - first) if n_rows else 0)
    arrays = [
        pa.array(event_id[keep]),
        pa.array(ts_us[keep].astype(np.int64), pa.timestamp("us", tz="UTC")),
        pa.array(user_id[keep]),
        pa.array(device_id[keep].astype(np.int32), mask=device_null[keep]),
        _strings(country[keep], COUNTRIES),
        _strings(channel[keep], CHANNELS),
        pa.array(amount[keep]),
        pa.array(match[keep].astype(np.float32)),
        pa.array(liveness[keep].astype(np.float32)),
        pa.array(label[keep]),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def batches(n_rows: int, seed: int = 0) -> Iterator[pa.RecordBatch]:
    """The table of `n_rows` rows as record batches of `BLOCK_ROWS` rows (the last may be shorter)."""
    n_rows = _check_rows(n_rows)
    for index in range(-(-n_rows // BLOCK_ROWS)):
        yield block(index, n_rows, seed)


def table(n_rows: int, seed: int = 0) -> pa.Table:
    """The whole table in memory: for sizes that fit (1e7 rows is about 450 MB)."""
    return pa.Table.from_batches(list(batches(n_rows, seed)), schema=SCHEMA)


def _progress(n_rows: int, show: bool | None, what: str) -> tqdm:
    show = n_rows >= PROGRESS_FROM_ROWS if show is None else show
    return tqdm(total=n_rows, unit="rows", unit_scale=True, desc=what, disable=not show)


def write_parquet(
    path: str | os.PathLike[str],
    n_rows: int,
    seed: int = 0,
    *,
    progress: bool | None = None,
    row_group_rows: int = 1 << 20,
) -> Path:
    """Write the table to Parquet block by block (bounded memory), in row groups of `row_group_rows`."""
    path = Path(path)
    if row_group_rows < 1:
        raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
    with pq.ParquetWriter(path, SCHEMA) as writer, _progress(n_rows, progress, f"writing {path.name}") as bar:
        held = SCHEMA.empty_table()  # rows not yet written: less than one row group
        for b in batches(n_rows, seed):
            held = pa.concat_tables([held, pa.Table.from_batches([b])])
            while held.num_rows >= row_group_rows:  # whole row groups as soon as they fill
                writer.write_table(held.slice(0, row_group_rows), row_group_size=row_group_rows)
                held = held.slice(row_group_rows)
            bar.update(b.num_rows)
        if held.num_rows or n_rows == 0:
            writer.write_table(held, row_group_size=row_group_rows)
    return path


def write_ipc(path: str | os.PathLike[str], n_rows: int, seed: int = 0, *, progress: bool | None = None) -> Path:
    """Write the table as an Arrow IPC file (random access, memory-mappable), one record batch per block."""
    path = Path(path)
    with (
        pa.OSFile(str(path), "wb") as sink,
        ipc.new_file(sink, SCHEMA) as writer,
        _progress(n_rows, progress, f"writing {path.name}") as bar,
    ):
        for b in batches(n_rows, seed):
            writer.write_batch(b)
            bar.update(b.num_rows)
    return path
