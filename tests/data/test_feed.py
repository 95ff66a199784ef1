"""Feeding a model: the Arrow path equals the pandas-lists path, names its copies, and refuses bad input."""

import pytest
import torch

from common.data import feed, pipeline, synth
from common.data.pipeline import FEATURES
from common.data.transport import CopyRequired


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    folder = tmp_path_factory.mktemp("feed")
    events = synth.write_parquet(folder / "events.parquet", 120_000)
    return {suffix: pipeline.sink(events, folder / f"features{suffix}") for suffix in (".parquet", ".arrow")}


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_the_arrow_path_equals_the_naive_path(features, suffix):
    fast = list(feed.arrow_batches(features[suffix], batch_rows=40_000))
    slow = list(feed.naive_batches(features[suffix], batch_rows=40_000))
    assert [len(b) for b in fast] == [len(b) for b in slow] and sum(map(len, fast)) > 100_000
    for a, b in zip(fast, slow, strict=True):
        assert a.features.shape == (len(a), len(FEATURES)) and a.features.dtype == torch.float32
        torch.testing.assert_close(a.features, b.features)
        torch.testing.assert_close(a.labels, b.labels)


def test_the_copies_on_the_way_are_named(features):
    batch = next(feed.arrow_batches(features[".arrow"]))
    assert {c.column for c in batch.copies} == {"gap_s", "features"}
    assert (batch.features[:, FEATURES.index("gap_s")] == -1).any(), "first attempts have no gap"


def test_record_batches_in_memory_feed_too(features):
    table = pipeline.run(next(iter(features.values())).parent / "events.parquet").to_arrow()
    rows = sum(len(b) for b in feed.arrow_batches(table.to_batches(max_chunksize=10_000)))
    assert rows == table.num_rows


def test_unfilled_nulls_and_bad_arguments_are_refused(features):
    with pytest.raises(CopyRequired, match=r"'gap_s'.*nulls"):
        next(feed.arrow_batches(features[".parquet"], fill_null={}))
    with pytest.raises(ValueError, match="batch_rows must be a positive integer"):
        next(feed.arrow_batches(features[".parquet"], batch_rows=0))
    with pytest.raises(ValueError, match="at least one feature"):
        next(feed.arrow_batches(features[".parquet"], columns=[]))
    with pytest.raises(ValueError, match=r"expected a \.parquet or \.arrow"):
        next(feed.arrow_batches("features.csv"))


def test_the_model_scores_every_row_it_is_fed(features):
    model = feed.mlp()
    run = feed.drive(feed.arrow_batches(features[".arrow"], batch_rows=30_000), model)
    assert run.rows > 100_000 and run.rows_per_s > 0
    assert set(run.copies) == {"gap_s: nulls filled with -1.0", "features: 7 columns cast into one float32 matrix"}
    batch = next(feed.arrow_batches(features[".arrow"]))
    with torch.inference_mode():
        logits = model.eval()(batch.features)
    assert logits.shape == (len(batch),) and torch.isfinite(logits).all()
