"""One feature transformation written four ways: a Python loop, NumPy, Polars expressions and Numba.

The transformation is a retry-risk score for identity-verification attempts. Fraudsters who fail a check
retry quickly, so the score rises when the same user tried moments ago, as well as when the face match or
the liveness check is weak or the amount is large. Per event, in the order the events arrived:

- `gap_s`: seconds since the same user's previous attempt; NaN (no value) for a user's first attempt;
- `risk`: clip(1.2·(1 − match) + 1.0·(1 − liveness) + 0.04·log1p(amount) + 0.3·burst − 0.3, 0, 1), where
  burst = exp(−gap_s / 60) is 1 for an instant retry, fades over about a minute, and is 0 for a first
  attempt. A missing (NaN) score or amount gives a NaN risk: no value is invented.

Why this one: `gap_s` is a per-group sequential feature, and each tool expresses it differently. The loop
keeps the last time seen per user in a dict and is obviously right, and obviously slow. NumPy has no "per
user" in its vocabulary, so it needs a trick: a stable sort by user, a diff, a mask where one user's run
ends and the next begins, and a scatter back to arrival order. Polars says it as `diff().over("user_id")`.
Numba compiles the plain loop, with an array indexed by user instead of a dict. The risk part is the
element-wise arithmetic every tool is good at. All four compute in float64 from the same inputs, and
tests hold them equal (the risk to a few ulps: not all of them take `exp` and `log1p` from the same maths
library).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
import polars as pl
import pyarrow as pa

W_MATCH, W_LIVENESS, W_AMOUNT, W_BURST, BIAS = 1.2, 1.0, 0.04, 0.3, -0.3
BURST_S = 60.0  # a retry this many seconds later counts exp(-1) of an instant one
S_PER_US = 1e-6  # multiplied, not divided, everywhere: Polars turns a division by a constant into this

DTYPES = {
    "user_id": np.dtype(np.int32),
    "ts_us": np.dtype(np.int64),
    "amount": np.dtype(np.float32),
    "match_score": np.dtype(np.float32),
    "liveness_score": np.dtype(np.float32),
}
HINTS = {  # how to get the expected dtype, shown in the error
    "ts_us": "microseconds since the epoch; for datetime64[us] use .view('int64')",
    "user_id": "use .astype(np.int32) if the ids fit",
}


@dataclass(frozen=True)
class Events:
    """The columns the transformation reads, as 1-D NumPy arrays of one length, in arrival order.

    Checked once here, so that the four implementations time only the transformation and fail alike:
    exact dtypes (nothing is coerced), equal lengths, `ts_us` non-decreasing (events are in the order they
    arrived), user ids >= 0 and amounts >= 0 (NaN scores and amounts are allowed: they mean "missing").
    """

    user_id: np.ndarray
    ts_us: np.ndarray
    amount: np.ndarray
    match_score: np.ndarray
    liveness_score: np.ndarray

    def __post_init__(self) -> None:
        lengths = {}
        for name, want in DTYPES.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name} must be a NumPy array of {want}, got {type(a).__name__}")
            if a.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
            if a.dtype != want:
                hint = f" ({HINTS[name]})" if name in HINTS else ""
                raise TypeError(f"{name} must have dtype {want}, got {a.dtype}{hint}")
            lengths[name] = len(a)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all columns must have the same length, got {lengths}")
        ts, user_id = self.ts_us, self.user_id
        if len(ts) > 1 and (bad := np.flatnonzero(ts[1:] < ts[:-1])).size:
            i = int(bad[0]) + 1
            raise ValueError(f"ts_us must be non-decreasing (events in arrival order): ts_us[{i}] < ts_us[{i - 1}]")
        if len(user_id) and user_id.min() < 0:
            raise ValueError(f"user ids must be >= 0, found {user_id.min()}")
        if np.any(self.amount < 0):  # NaN compares False: a missing amount passes
            raise ValueError(f"amounts must be >= 0 (or NaN for missing), found {np.nanmin(self.amount)}")

    def __len__(self) -> int:
        return len(self.user_id)

    def head(self, n: int) -> Events:
        """The first `n` events (views, no copy)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return Events(*(getattr(self, name)[:n] for name in DTYPES))

    @classmethod
    def from_table(cls, table: pa.Table) -> Events:
        """The columns of a `synth.table(n)` (or any table with its schema) as contiguous NumPy arrays."""
        ts = table["ts"]
        if not pa.types.is_timestamp(ts.type) or ts.type.unit != "us":
            raise TypeError(f"ts must be a timestamp[us] column, got {ts.type}")
        cols = {
            "user_id": table["user_id"],
            "ts_us": ts.cast(pa.int64()),
            "amount": table["amount"],
            "match_score": table["match_score"],
            "liveness_score": table["liveness_score"],
        }
        for name, col in cols.items():
            if col.null_count:
                raise ValueError(f"{name} has {col.null_count} nulls: the transformation expects none")
        return cls(**{name: np.ascontiguousarray(col.to_numpy()) for name, col in cols.items()})


class Features(NamedTuple):
    """Per event, in the order of the input: float64 arrays, NaN where there is no value."""

    gap_s: np.ndarray
    risk: np.ndarray


def _check(events: object) -> Events:
    if not isinstance(events, Events):
        raise TypeError(f"expected an Events (see Events.from_table), got {type(events).__name__}")
    return events


# --- 1. the Python loop: the specification ----------------------------------------------------------------


def python_loop(events: Events) -> Features:
    """One event at a time, the last time seen per user in a dict."""
    events = _check(events)
    last: dict[int, int] = {}
    gaps, risks = [], []
    columns = (events.user_id, events.ts_us, events.amount, events.match_score, events.liveness_score)
    for user, ts, amount, match, liveness in zip(*(c.tolist() for c in columns), strict=True):
        prev = last.get(user)
        last[user] = ts
        if prev is None:
            gap, burst = math.nan, 0.0
        else:
            gap = (ts - prev) * S_PER_US
            burst = math.exp(gap / -BURST_S)
        r = W_MATCH * (1.0 - match) + W_LIVENESS * (1.0 - liveness) + W_AMOUNT * math.log1p(amount)
        r = r + W_BURST * burst + BIAS
        if r < 0.0:  # written as comparisons, not min/max: a NaN fails both and stays NaN
            r = 0.0
        elif r > 1.0:
            r = 1.0
        gaps.append(gap)
        risks.append(r)
    return Features(np.array(gaps, dtype=np.float64), np.array(risks, dtype=np.float64))


# --- 2. NumPy: whole-array calls, and a sort to make "per user" contiguous ----------------------------------


def numpy_gaps(user_id: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
    """`gap_s` with whole-array calls: put each user's events next to each other, diff, mask, put back.

    Sorting by user must keep arrival (= time) order within a user: a stable sort. NumPy's stable argsort
    of int32 is a comparison sort (timsort) of indices; instead, each user id is packed with its row number
    into one int64 key (user in the high 32 bits, row in the low 32). The keys are unique, so any sort of
    them is stable, and NumPy sorts plain int64 values with a SIMD quicksort on x86 (AVX2 or AVX-512): a few
    times faster (the notebook measures it). The row numbers come back out of the low bits.
    """
    n = len(user_id)
    if n >= 1 << 32:
        raise ValueError(f"at most 2**32 - 1 events fit the sort key, got {n}")
    key = np.sort((user_id.astype(np.int64) << 32) | np.arange(n, dtype=np.int64))
    order = key & 0xFFFF_FFFF  # row numbers, grouped by user, in time order within a user
    user = key >> 32
    ts = ts_us[order]
    sorted_gap = np.empty(n, dtype=np.float64)
    sorted_gap[:1] = np.nan
    np.multiply(np.diff(ts), S_PER_US, out=sorted_gap[1:])
    sorted_gap[1:][user[1:] != user[:-1]] = np.nan  # a user's first attempt: no previous one
    gap = np.empty(n, dtype=np.float64)
    gap[order] = sorted_gap  # back to arrival order
    return gap


def numpy_vectorised(events: Events) -> Features:
    """`numpy_gaps`, then the risk as a few whole-array passes in float64."""
    events = _check(events)
    gap = numpy_gaps(events.user_id, events.ts_us)
    burst = np.exp(gap / -BURST_S)
    burst[np.isnan(gap)] = 0.0
    r = W_MATCH * (1.0 - events.match_score.astype(np.float64))
    r += W_LIVENESS * (1.0 - events.liveness_score.astype(np.float64))
    r += W_AMOUNT * np.log1p(events.amount.astype(np.float64))
    r += W_BURST * burst
    r += BIAS
    return Features(gap, np.clip(r, 0.0, 1.0, out=r))  # np.clip keeps NaN


# --- 3. Polars: the same thing said as expressions ----------------------------------------------------------


def _f64(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.Float64)


def polars_expressions(events: Events) -> Features:
    """`diff().over("user_id")` is the per-user gap; Polars runs the expressions on all cores."""
    events = _check(events)
    df = pl.DataFrame({name: getattr(events, name) for name in DTYPES})
    gap = pl.col("ts_us").diff().over("user_id") * S_PER_US  # null for a user's first attempt
    risk = (
        W_MATCH * (1.0 - _f64("match_score"))
        + W_LIVENESS * (1.0 - _f64("liveness_score"))
        + W_AMOUNT * _f64("amount").log1p()
        + W_BURST * (pl.col("gap_s") / -BURST_S).exp().fill_null(0.0)
        + BIAS
    ).clip(0.0, 1.0)  # clip keeps NaN
    out = df.lazy().with_columns(gap.alias("gap_s")).select("gap_s", risk.alias("risk")).collect()
    return Features(out["gap_s"].to_numpy(), out["risk"].to_numpy())  # null becomes NaN


# --- 4. Numba: the loop, compiled ----------------------------------------------------------------------------


@numba.njit(cache=False)  # compiled on first call in each process: the notebook times that separately
def numba_kernel(
    user_id: np.ndarray,
    ts_us: np.ndarray,
    amount: np.ndarray,
    match_score: np.ndarray,
    liveness_score: np.ndarray,
    n_users: int,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(user_id)
    last = np.full(n_users, -1, dtype=np.int64)  # row of each user's previous attempt; -1: none yet
    gap = np.empty(n, dtype=np.float64)
    risk = np.empty(n, dtype=np.float64)
    for i in range(n):
        u = user_id[i]
        prev = last[u]
        last[u] = i
        if prev < 0:
            gap[i] = np.nan
            burst = 0.0
        else:
            gap[i] = (ts_us[i] - ts_us[prev]) * S_PER_US
            burst = math.exp(gap[i] / -BURST_S)
        r: float = W_MATCH * (1.0 - np.float64(match_score[i])) + W_LIVENESS * (1.0 - np.float64(liveness_score[i]))
        r = r + W_AMOUNT * math.log1p(np.float64(amount[i]))
        r = r + W_BURST * burst + BIAS
        if r < 0.0:
            r = 0.0
        elif r > 1.0:
            r = 1.0
        risk[i] = r
    return gap, risk


def numba_loop(events: Events) -> Features:
    """The loop of `python_loop`, compiled to machine code, with an array indexed by user id for the dict.

    The array has one slot per possible id, so ids much larger than the number of events are first mapped
    to 0..k-1 (a sort, paid only then) rather than allocating a slot for every id up to the largest."""
    events = _check(events)
    user_id = events.user_id
    n_users = int(user_id.max()) + 1 if len(user_id) else 0
    if n_users > 4 * len(user_id) + 1024:
        unique, inverse = np.unique(user_id, return_inverse=True)
        user_id, n_users = inverse.astype(np.int32), len(unique)
    gap, risk = numba_kernel(user_id, events.ts_us, events.amount, events.match_score, events.liveness_score, n_users)
    return Features(gap, risk)


IMPLEMENTATIONS = {
    "Python loop": python_loop,
    "NumPy": numpy_vectorised,
    "Polars": polars_expressions,
    "Numba": numba_loop,
}
