import os
from datetime import timedelta

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from common.data import pipeline, synth
from common.data.pipeline import Window

N = 3 * synth.BLOCK_ROWS + 777
WINDOW = Window(synth.START + timedelta(days=3), synth.START + timedelta(days=24), ("app", "kiosk"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("events")
    return {
        "parquet": synth.write_parquet(folder / "events.parquet", N, seed=3, row_group_rows=50_000),
        "ipc": synth.write_ipc(folder / "events.arrow", N, seed=3),
    }


@pytest.fixture(scope="module")
def polars_features(files) -> pl.DataFrame:
    return pipeline.run(files["parquet"], WINDOW)


def assert_same_features(got: pl.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(pipeline.OUTPUT) == list(want.columns)
    assert got.height == len(want) > 0
    for name in pipeline.OUTPUT:
        a = got[name].to_numpy().astype(np.float64)
        b = want[name].to_numpy().astype(np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name)


def test_polars_and_pandas_give_the_same_features(files, polars_features) -> None:
    assert_same_features(polars_features, pipeline.features_pandas(files["parquet"], WINDOW))


def test_features_mean_what_they_say(files, polars_features) -> None:
    events = pl.read_parquet(files["parquet"])
    kept = events.filter(
        pl.col("ts").is_between(WINDOW.start, WINDOW.end, closed="left") & pl.col("channel").is_in(WINDOW.channels)
    )
    f = polars_features
    assert f.height == kept.height and f["event_id"].to_list() == kept["event_id"].to_list()
    first = f.filter(pl.col("attempt_no") == 0)
    assert first["gap_s"].null_count() == first.height == f["user_id"].n_unique()  # a first attempt has no gap
    assert f["gap_s"].drop_nulls().min() >= 0
    assert (f["attempt_no"] < f["user_events"]).all()
    assert abs(f["amount_z"].mean()) < 1e-9 and abs(f["amount_z"].std() - 1) < 1e-9
    one = f.filter(pl.col("user_id") == f["user_id"][0])
    assert one.height == one["user_events"][0] and sorted(one["attempt_no"]) == list(range(one.height))


def test_ipc_streaming_and_sinks_give_the_same_features(files, polars_features, tmp_path) -> None:
    # the engines sum in different orders: the standardised amount may differ in its last bits
    def same(frame: pl.DataFrame) -> None:
        assert_frame_equal(frame, polars_features, check_exact=False, rel_tol=1e-12, abs_tol=1e-12)

    assert pipeline.run(files["ipc"], WINDOW).equals(polars_features)
    same(pipeline.run(files["parquet"], WINDOW, streaming=True))
    same(pl.read_parquet(pipeline.sink(files["parquet"], tmp_path / "f.parquet", WINDOW)))
    same(pl.read_ipc(pipeline.sink(files["ipc"], tmp_path / "f.arrow", WINDOW)))


def test_the_optimiser_pushes_the_filter_and_the_columns_into_the_scan(files) -> None:
    plan = pipeline.optimized_plan(files["parquet"], WINDOW)
    scans = [line for line in plan.splitlines() if "Parquet SCAN" in line or "SCAN" in line]
    assert scans, plan
    # every scan reads only the needed columns, and the window's filter is applied while scanning
    assert f"{len(pipeline.NEEDED)}/{len(synth.SCHEMA)} COLUMNS" in plan, plan
    assert "SELECTION" in plan, plan
    naive = pipeline.features(pipeline.Source(files["parquet"]).scan(), WINDOW).explain(optimized=False)
    assert f"{len(pipeline.NEEDED)}/{len(synth.SCHEMA)} COLUMNS" not in naive


def test_a_schema_mismatch_names_the_columns_and_types(tmp_path) -> None:
    table = synth.table(1000)
    bad = table.drop_columns(["amount"]).set_column(
        table.schema.get_field_index("user_id"), "user_id", table.column("user_id").cast(pa.int64())
    )
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(pl.exceptions.SchemaError) as info:
        pipeline.run(tmp_path / "bad.parquet")
    message = str(info.value)
    assert "user_id: expected Int32, found Int64" in message and "amount: missing (expected Float32)" in message


def test_bad_files_and_windows_are_refused_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no events file at"):
        pipeline.run(tmp_path / "missing.parquet")
    (tmp_path / "events.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"expected a \.parquet or \.arrow"):
        pipeline.run(tmp_path / "events.csv")
    with pytest.raises(ValueError, match="must be after its start"):
        Window(synth.START, synth.START)
    with pytest.raises(ValueError, match="channels must be a non-empty subset"):
        Window(channels=("fax",))
    with pytest.raises(ValueError, match=r"expected a \.parquet or \.arrow output"):
        pipeline.sink(synth.write_parquet(tmp_path / "e.parquet", 100), tmp_path / "out.csv")


def test_a_truncated_file_is_an_error_not_a_shorter_table(files, tmp_path) -> None:
    for path in files.values():
        data = path.read_bytes()
        cut = tmp_path / f"cut{path.suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(pipeline.CorruptFile, match=r"cut\.(parquet|arrow): not a readable .*truncated or corrupt"):
            pipeline.run(cut, WINDOW)
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(pipeline.CorruptFile, match=r"fake\.parquet"):
        pipeline.run(fake)


def test_the_plan_is_lazy_and_as_written_it_reads_every_column(files, polars_features) -> None:
    query = pipeline.plan(files["parquet"], WINDOW)
    assert isinstance(query, pl.LazyFrame)
    assert query.collect(engine="in-memory").equals(polars_features)
    naive = pipeline.unoptimized_plan(files["parquet"], WINDOW)
    assert naive.count("Parquet SCAN") == 2 and "FILTER" in naive, naive  # two branches, filtered after the scan
    assert f"*/{len(synth.SCHEMA)} COLUMNS" in naive and "SELECTION" not in naive, naive


def test_row_groups_come_from_the_footer_in_time_order(files) -> None:
    groups = pipeline.row_groups(files["parquet"])
    assert groups["rows"].to_list() == [50_000] * (N // 50_000) + [N % 50_000]
    assert (groups["ts_min"] <= groups["ts_max"]).all()
    assert (groups["ts_max"].head(-1) <= groups["ts_min"].tail(-1)).all()  # written in ts order: ranges do not overlap
    events = pl.read_parquet(files["parquet"], columns=["ts"])
    assert groups["ts_min"][0] == events["ts"].min() and groups["ts_max"][-1] == events["ts"].max()
    with pytest.raises(ValueError, match=r"expected a \.parquet file"):
        pipeline.row_groups(files["ipc"])


def test_parquet_reads_reports_what_the_reader_skipped(files) -> None:
    path = files["parquet"]
    first_days = Window(synth.START, synth.START + timedelta(days=5))  # inside the first of 4 row groups
    want = pipeline.run(path, first_days)
    fd2 = os.fstat(2)
    got, reads = pipeline.parquet_reads(pipeline.plan(path, first_days), engine="in-memory")
    assert got.equals(want)
    assert reads == [pipeline.ParquetRead(len(pipeline.NEEDED), len(synth.SCHEMA), True, 1, 4)]
    got, reads = pipeline.parquet_reads(pipeline.plan(path, first_days), optimizations=pl.QueryOptFlags.none())
    assert_same_features(got, want.to_pandas())
    assert reads == [pipeline.ParquetRead(len(synth.SCHEMA), len(synth.SCHEMA), False, None, None)] * 2
    assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (fd2.st_ino, fd2.st_dev)  # stderr is given back
    with pytest.raises(RuntimeError, match="scans no Parquet file"):
        pipeline.parquet_reads(pl.LazyFrame({"a": [1]}))
