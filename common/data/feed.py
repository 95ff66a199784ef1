"""Feeding a model: Arrow record batches become torch tensors without a copy per value, against the path
people often write (pandas, then Python lists, then `torch.tensor`).

The Arrow path reads a Parquet or Arrow IPC file batch by batch. Each column becomes a tensor over its
own buffer (`transport.column_to_tensor`); the one copy a model needs is casting the k feature columns
into its float32 input matrix, one contiguous pass per column, reported as a named copy beside any null
filling. The naive path turns every value into a Python float on the way, so it pays an
interpreter round trip per value; `tests/data/test_feed.py` holds both paths equal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from common.data.pipeline import FEATURES
from common.data.transport import Copy, batch_to_tensors, map_ipc

LABEL = "label"
BATCH_ROWS = 65_536
FILL_NULL = {"gap_s": -1.0}  # a user's first attempt has no previous one: -1 s, a value no real gap takes


@dataclass
class Batch:
    """One batch for a model: `features` (n x k float32), `labels` (n, float32) and the copies made."""

    features: torch.Tensor
    labels: torch.Tensor
    copies: list[Copy] = field(default_factory=list)

    def __len__(self) -> int:
        return self.labels.shape[0]


def _record_batches(
    source: str | os.PathLike[str] | Iterable[pa.RecordBatch], columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    if not isinstance(source, str | os.PathLike):
        yield from source
        return
    path = Path(source)
    if path.suffix == ".parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
    elif path.suffix in (".arrow", ".ipc", ".feather"):
        yield from map_ipc(path).table.select(columns).to_batches(max_chunksize=batch_rows)
    else:
        raise ValueError(f"{path.name}: expected a .parquet or .arrow (Arrow IPC) file, got '{path.suffix}'")


def _check(columns: Sequence[str], batch_rows: int) -> list[str]:
    if not columns:
        raise ValueError("columns must name at least one feature column")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    return list(columns)


def arrow_batches(
    source: str | os.PathLike[str] | Iterable[pa.RecordBatch],
    columns: Sequence[str] = FEATURES,
    label: str = LABEL,
    *,
    batch_rows: int = BATCH_ROWS,
    fill_null: dict[str, float] | None = None,
) -> Iterator[Batch]:
    """Batches for a model from a Parquet or Arrow IPC file, or from any iterable of record batches.

    Columns go to torch through DLPack; the feature matrix is assembled by torch (one named copy), and
    nulls are filled only in the columns named in `fill_null` (default: `FILL_NULL`); a null anywhere
    else is an error, not a silent zero.
    """
    columns = _check(columns, batch_rows)
    fill_null = FILL_NULL if fill_null is None else fill_null
    for record_batch in _record_batches(source, [*columns, label], batch_rows):
        tensors, copies = batch_to_tensors(record_batch, [*columns, label], fill_null=fill_null)
        # Column-major: each column is one contiguous cast-and-copy (strided writes into rows measured
        # 2-40x slower), and the model gets the n x k matrix as a transposed view, which Linear accepts.
        by_column = torch.empty((len(columns), record_batch.num_rows), dtype=torch.float32)
        for j, name in enumerate(columns):
            by_column[j].copy_(tensors[name])
        copies.append(Copy("features", f"{len(columns)} columns cast into one float32 matrix", by_column.nbytes))
        yield Batch(by_column.t(), tensors[label].to(torch.float32), copies)


def naive_batches(
    path: str | os.PathLike[str],
    columns: Sequence[str] = FEATURES,
    label: str = LABEL,
    *,
    batch_rows: int = BATCH_ROWS,
    fill_null: dict[str, float] | None = None,
) -> Iterator[Batch]:
    """The baseline: the file read whole into pandas, each batch turned into Python lists, then tensors."""
    columns = _check(columns, batch_rows)
    fill_null = FILL_NULL if fill_null is None else fill_null
    path = Path(path)
    df = pd.read_parquet(path, columns=[*columns, label]) if path.suffix == ".parquet" else pd.read_feather(path)
    df = df.fillna(fill_null)
    for start in range(0, len(df), batch_rows):
        chunk = df.iloc[start : start + batch_rows]
        rows = chunk[columns].values.tolist()
        yield Batch(torch.tensor(rows, dtype=torch.float32), torch.tensor(chunk[label].tolist(), dtype=torch.float32))


def mlp(n_features: int = len(FEATURES), hidden: int = 64, seed: int = 0) -> nn.Module:
    """A small fraud classifier over the features (logits out): the model the batches feed."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.BatchNorm1d(n_features), nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Flatten(0)
    )


@dataclass(frozen=True)
class Throughput:
    rows: int
    seconds: float
    copies: tuple[str, ...]  # the kinds of copy made on the way (column: reason), once each

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def drive(batches: Iterable[Batch], model: nn.Module | None = None) -> Throughput:
    """Consume every batch (running the model on it in inference mode, if given) and time it all,
    reading the source included."""
    rows = 0
    kinds: dict[str, None] = {}  # the batch types seen, in order (a dict as an ordered set)
    if model is not None:
        model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            if model is not None:
                model(batch.features)
            rows += len(batch)
            kinds.update(dict.fromkeys(f"{c.column}: {c.reason}" for c in batch.copies))
    return Throughput(rows, time.perf_counter() - t0, tuple(kinds))
