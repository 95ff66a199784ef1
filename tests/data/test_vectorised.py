"""The four implementations of the retry-risk features agree with each other and with hand-worked values,
on synthetic events, on edge cases and with missing values; bad input fails before any of them runs."""

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data import synth, vectorised
from common.data.vectorised import IMPLEMENTATIONS, Events, Features

NAMES = list(IMPLEMENTATIONS)


def make(user_id, ts_s, amount=None, match=None, liveness=None) -> Events:
    """Events from plain lists, timestamps in seconds; unspecified columns get ordinary values."""
    n = len(user_id)
    return Events(
        np.asarray(user_id, dtype=np.int32),
        (np.asarray(ts_s, dtype=np.float64) * 1e6).astype(np.int64),
        np.asarray([50.0] * n if amount is None else amount, dtype=np.float32),
        np.asarray([0.9] * n if match is None else match, dtype=np.float32),
        np.asarray([0.9] * n if liveness is None else liveness, dtype=np.float32),
    )


def assert_same(got: Features, want: Features, name: str) -> None:
    assert got.gap_s.dtype == got.risk.dtype == np.float64, name
    assert got.gap_s.shape == got.risk.shape == want.gap_s.shape, name
    # the gap is an integer difference times one constant: exact, NaN in the same places
    np.testing.assert_array_equal(got.gap_s, want.gap_s, err_msg=f"{name}: gap_s")
    # exp and log1p come from different maths libraries: equal to a few ulps, NaN in the same places
    np.testing.assert_allclose(got.risk, want.risk, rtol=1e-12, atol=1e-15, err_msg=f"{name}: risk")


def assert_all_agree(events: Events) -> Features:
    want = vectorised.python_loop(events)
    for name, fn in IMPLEMENTATIONS.items():
        assert_same(fn(events), want, name)
    return want


@pytest.fixture(scope="module")
def events() -> Events:
    return Events.from_table(synth.table(synth.BLOCK_ROWS + 4321, seed=5))


def test_all_four_agree_on_synthetic_events(events) -> None:
    want = assert_all_agree(events)
    first = np.isnan(want.gap_s)
    assert first.sum() == len(np.unique(events.user_id))  # exactly one first attempt per user
    assert (want.gap_s[~first] >= 0).all()
    assert (want.risk == 0).any() and (want.risk > 0.9).any() and ((want.risk >= 0) & (want.risk <= 1)).all()


def test_missing_scores_and_amounts_give_a_missing_risk_in_all_four(events) -> None:
    rng = np.random.default_rng(0)
    columns = {name: getattr(events, name).copy() for name in vectorised.DTYPES}
    holes = {name: rng.random(len(events)) < 0.03 for name in ("amount", "match_score", "liveness_score")}
    for name, where in holes.items():
        columns[name][where] = np.nan
    with_holes = Events(**columns)
    want = assert_all_agree(with_holes)
    missing = holes["amount"] | holes["match_score"] | holes["liveness_score"]
    np.testing.assert_array_equal(np.isnan(want.risk), missing)
    np.testing.assert_array_equal(want.gap_s, vectorised.python_loop(events).gap_s)  # gaps do not need scores


@pytest.mark.parametrize("name", NAMES)
def test_worked_example(name) -> None:
    # user 5 at 0 s, 3 s and again at 3 s (same microsecond); user 7 at 1 s and 10 s; user 2 once
    ev = make([5, 7, 5, 5, 7, 2], [0, 1, 3, 3, 10, 10])
    got = IMPLEMENTATIONS[name](ev)
    np.testing.assert_array_equal(got.gap_s, [np.nan, np.nan, 3.0, 0.0, 9.0, np.nan])
    score = float(np.float32(0.9))  # the float32 input, exactly, then float64 arithmetic
    base = 1.2 * (1 - score) + 1.0 * (1 - score) + 0.04 * math.log1p(50.0) - 0.3
    burst = [0.0, 0.0, math.exp(-3 / 60), 1.0, math.exp(-9 / 60), 0.0]
    np.testing.assert_allclose(got.risk, [base + 0.3 * b for b in burst], rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_risk_is_clipped_to_0_and_1(name) -> None:
    ev = make([1, 2, 3], [0, 0, 0], amount=[0, 1e6, 0], match=[1, 0, 0.5], liveness=[1, 0, 0.5])
    risk = IMPLEMENTATIONS[name](ev).risk
    assert risk[0] == 0.0 and risk[1] == 1.0  # -0.3 below the range, 2.2 + 0.55 above it
    assert risk[2] == pytest.approx(1.2 * 0.5 + 0.5 - 0.3)


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_one_row(name) -> None:
    empty = IMPLEMENTATIONS[name](make([], []))
    assert empty.gap_s.shape == empty.risk.shape == (0,)
    assert empty.gap_s.dtype == empty.risk.dtype == np.float64
    one = IMPLEMENTATIONS[name](make([3], [12.5], amount=[0.0], match=[0.5], liveness=[0.5]))
    assert np.isnan(one.gap_s).all() and one.gap_s.shape == (1,)
    np.testing.assert_allclose(one.risk, [1.2 * 0.5 + 0.5 - 0.3])


def test_large_sparse_user_ids_and_a_single_user() -> None:
    # ids far larger than the number of events: Numba maps them to 0..k-1 instead of one slot per id
    assert_all_agree(make([2_000_000_000, 7, 2_000_000_000, 0, 7], [0, 1, 2, 3, 4]))
    assert_all_agree(make([4] * 1000, np.arange(1000) * 0.5))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5_000_000), st.floats(0, 1e5)), max_size=80),
    st.integers(0, 2**40),
)
def test_all_four_agree_on_random_events(rows, start_us) -> None:
    users = np.array([u for u, _, _ in rows], dtype=np.int32)
    ts = start_us + np.cumsum([step for _, step, _ in rows], dtype=np.int64)  # steps of 0 are ties
    amount = np.array([a for _, _, a in rows], dtype=np.float32)
    rng = np.random.default_rng(len(rows))
    scores = rng.random((2, len(rows)), dtype=np.float32)
    assert_all_agree(Events(users, ts.astype(np.int64), amount, scores[0], scores[1]))


def test_from_table_reads_the_synth_columns() -> None:
    table = synth.table(1000, seed=2)
    ev = Events.from_table(table)
    assert len(ev) == 1000 and ev.head(10).user_id.tolist() == table["user_id"].to_pylist()[:10]
    assert ev.ts_us.tolist() == table["ts"].cast(pa.int64()).to_pylist()
    assert {name: getattr(ev, name).dtype for name in vectorised.DTYPES} == vectorised.DTYPES


# --- bad input -------------------------------------------------------------------------------------------


def columns(n: int = 4) -> dict[str, np.ndarray]:
    return {
        "user_id": np.arange(n, dtype=np.int32),
        "ts_us": np.arange(n, dtype=np.int64),
        "amount": np.ones(n, dtype=np.float32),
        "match_score": np.ones(n, dtype=np.float32),
        "liveness_score": np.ones(n, dtype=np.float32),
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("match_score", np.ones(4, dtype=np.float64), "match_score must have dtype float32, got float64"),
        ("user_id", np.arange(4, dtype=np.int64), "user_id must have dtype int32, got int64"),
        ("ts_us", np.arange(4).astype("datetime64[us]"), r"ts_us must have dtype int64.*view\('int64'\)"),
        ("amount", [1.0, 2.0, 3.0, 4.0], "amount must be a NumPy array of float32, got list"),
    ],
)
def test_wrong_dtype_is_a_type_error_naming_the_column(name, value, message) -> None:
    with pytest.raises(TypeError, match=message):
        Events(**(columns() | {name: value}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount": np.ones(3, dtype=np.float32)}, r"same length.*'amount': 3"),
        ({"user_id": np.zeros((2, 2), dtype=np.int32)}, r"user_id must be 1-D, got shape \(2, 2\)"),
        ({"ts_us": np.array([0, 5, 4, 6], dtype=np.int64)}, r"non-decreasing.*ts_us\[2\] < ts_us\[1\]"),
        ({"user_id": np.array([0, -1, 2, 3], dtype=np.int32)}, "user ids must be >= 0, found -1"),
        ({"amount": np.array([1, -2, np.nan, 0], dtype=np.float32)}, r"amounts must be >= 0.*-2"),
    ],
)
def test_inconsistent_columns_are_a_value_error(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        Events(**(columns() | change))


@pytest.mark.parametrize("name", NAMES)
def test_implementations_take_only_checked_events(name) -> None:
    with pytest.raises(TypeError, match="expected an Events"):
        IMPLEMENTATIONS[name](columns())


def test_from_table_refuses_nulls_and_other_timestamps() -> None:
    table = synth.table(100)
    holed = table.set_column(8, "liveness_score", pa.array([None] + [0.5] * 99, pa.float32()))
    with pytest.raises(ValueError, match="liveness_score has 1 nulls"):
        Events.from_table(holed)
    seconds = table.set_column(1, "ts", table["ts"].cast(pa.timestamp("s", tz="UTC"), safe=False))
    with pytest.raises(TypeError, match=r"ts must be a timestamp\[us\] column"):
        Events.from_table(seconds)
