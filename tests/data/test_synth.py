import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from common.data import synth

N = synth.BLOCK_ROWS + 1234  # two blocks, the second cut short


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return synth.table(N, seed=7)


def test_same_seed_same_table_other_seed_another(events) -> None:
    assert synth.table(N, seed=7).equals(events)
    other = synth.table(N, seed=8)
    assert other.num_rows == N and not other.equals(events)


def test_blocks_are_independent_and_a_prefix_is_the_smaller_table(events) -> None:
    assert events.schema == synth.SCHEMA and events.num_rows == N
    assert [b.num_rows for b in synth.batches(N, seed=7)] == [synth.BLOCK_ROWS, 1234]
    assert synth.block(1, N, seed=7).equals(events.slice(synth.BLOCK_ROWS).combine_chunks().to_batches()[0])
    small = synth.table(500, seed=7)
    # the size only sets the user count and the time step: ids and scores of a prefix do not move
    head = events.slice(0, 500)
    for column in ("event_id", "country", "channel", "amount", "match_score", "liveness_score", "label"):
        assert small.column(column).equals(head.column(column)), column


def test_values_are_plausible_and_the_label_follows_the_scores(events) -> None:
    df = pl.from_arrow(events)
    assert df["event_id"].to_list() == list(range(N))
    assert df["ts"].is_sorted() and df["ts"].min() >= synth.START
    assert df["user_id"].min() >= 0 and df["user_id"].max() < synth._users(N)
    assert 0.02 < df["device_id"].null_count() / N < 0.06  # unregistered browsers
    assert set(df["country"].unique()) <= set(synth.COUNTRIES) and set(df["channel"].unique()) == set(synth.CHANNELS)
    assert (
        df["amount"].min() >= 0
        and df["match_score"].is_between(0, 1).all()
        and df["liveness_score"].is_between(0, 1).all()
    )
    fraud_rate = df["label"].mean()
    assert 0.002 < fraud_rate < 0.05, fraud_rate
    by_label = df.group_by("label").agg(pl.col("match_score").mean(), pl.col("liveness_score").mean()).sort("label")
    assert by_label["match_score"][1] < by_label["match_score"][0]  # fraud matches worse
    assert by_label["liveness_score"][1] < by_label["liveness_score"][0]
    top_user_share = df["user_id"].value_counts(sort=True)["count"][0] / N
    assert top_user_share > 10 / synth._users(N)  # skewed: some users far above the mean


def test_parquet_and_ipc_files_hold_the_same_table(events, tmp_path) -> None:
    parquet = synth.write_parquet(tmp_path / "events.parquet", N, seed=7, row_group_rows=50_000)
    assert pq.read_table(parquet).equals(events)
    assert pq.ParquetFile(parquet).metadata.num_row_groups == 2
    arrow = synth.write_ipc(tmp_path / "events.arrow", N, seed=7)
    with pa.memory_map(str(arrow)) as source:
        reader = ipc.open_file(source)
        assert reader.num_record_batches == 2
        assert reader.read_all().equals(events)


def test_an_empty_table_is_still_a_table_with_the_schema(tmp_path) -> None:
    assert synth.table(0).num_rows == 0 and synth.table(0).schema == synth.SCHEMA
    assert pq.read_table(synth.write_parquet(tmp_path / "empty.parquet", 0)).schema == synth.SCHEMA
    with pa.memory_map(str(synth.write_ipc(tmp_path / "empty.arrow", 0))) as source:
        assert ipc.open_file(source).read_all().num_rows == 0


def test_progress_shows_for_large_writes_only(tmp_path, capsys) -> None:
    synth.write_ipc(tmp_path / "quiet.arrow", 1000)
    assert "rows" not in capsys.readouterr().err
    synth.write_ipc(tmp_path / "loud.arrow", 1000, progress=True)
    assert "1.00k/1.00k" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("n_rows", "error", "message"),
    [(-1, ValueError, "n_rows must be >= 0, got -1"), (1.5, TypeError, "n_rows must be an integer, got float"),
     (True, TypeError, "got bool"), ("10", TypeError, "got str")],
)  # fmt: skip
def test_bad_sizes_are_refused_with_what_was_expected(n_rows, error, message) -> None:
    with pytest.raises(error, match=message):
        synth.table(n_rows)


def test_a_block_outside_the_table_is_refused() -> None:
    with pytest.raises(ValueError, match="block 2 is outside a table of 70000 rows"):
        synth.block(2, 70_000)
