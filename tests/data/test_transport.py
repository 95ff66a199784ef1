"""Zero-copy transport: addresses, mapped IPC files, shared memory across processes, columns into torch."""

import os
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pytest
import torch

from common.data import synth
from common.data.memory import assert_zero_copy, copied_regions, regions, resident_by_kind, shares_memory
from common.data.pipeline import CorruptFile
from common.data.transport import (
    Consumer,
    CopyRequired,
    SharedTable,
    attach,
    batch_to_tensors,
    column_to_tensor,
    map_ipc,
)

LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return synth.table(150_000)  # three blocks: three chunks per column


@pytest.fixture(scope="module")
def ipc_file(tmp_path_factory, events) -> os.PathLike:
    path = tmp_path_factory.mktemp("ipc") / "events.arrow"
    with ipc.new_file(path, events.schema) as writer:
        writer.write_table(events)
    return path


# --- addresses ---


def test_views_are_zero_copy_and_copies_are_named():
    a = np.arange(1000, dtype=np.float32)
    assert_zero_copy(a, a[10:20])
    assert_zero_copy(a, a[::-3])  # negative strides: the region still lies inside
    assert_zero_copy(a, torch.from_numpy(a).view(10, 100).t())
    with pytest.raises(AssertionError, match=r"1 of 1 buffers were copied: view: values \(40 B at 0x"):
        assert_zero_copy(a, pa.array(a[:10].copy()))


def test_arrow_regions_name_each_buffer(events):
    labels = [r.label for r in regions(events)]
    assert "device_id[0]: validity" in labels and "device_id[0]: values" in labels
    assert {"country[2]: offsets", "country[2]: data"} <= set(labels)
    assert sum(r.nbytes for r in regions(events)) >= events.nbytes * 0.99


def test_polars_numeric_columns_share_arrow_memory_and_strings_do_not(events):
    one = events.combine_chunks()
    df = pl.from_arrow(one)
    assert_zero_copy(one, df["amount"])
    assert regions(df["amount"])[0].address == df["amount"].to_numpy(allow_copy=False).ctypes.data
    assert copied_regions(one, df["country"]), "Polars keeps strings as views; Arrow strings come back copied"
    assert shares_memory(one["amount"], df["amount"]) and not shares_memory(one["amount"], df["ts"])


def test_address_errors_are_clear():
    with pytest.raises(ValueError, match="empty"):
        assert_zero_copy(np.zeros(4), np.zeros(0))
    with pytest.raises(TypeError, match="cannot list the memory of a list"):
        regions([1, 2, 3])


# --- memory-mapped IPC ---


def test_a_mapped_ipc_file_is_read_without_copying(ipc_file, events):
    mapped = map_ipc(ipc_file)
    assert mapped.table.equals(events)
    assert_zero_copy(mapped.buffer, mapped.table)
    assert mapped.region.nbytes == os.path.getsize(ipc_file)


@pytest.mark.skipif(not LINUX, reason="reads resident memory from /proc/self/status (Linux)")
def test_mapping_a_file_adds_no_private_memory(tmp_path):
    path = synth.write_ipc(tmp_path / "big.arrow", 1_000_000)
    before = resident_by_kind()
    mapped = map_ipc(path)
    total = pc.sum(mapped.table["amount"]).as_py()
    grown = resident_by_kind()["anon"] - before["anon"]
    assert total > 0
    assert grown < os.path.getsize(path) * 0.05, f"{grown} private bytes for a {os.path.getsize(path)}-byte file"


def test_compressed_truncated_and_missing_files_are_refused(tmp_path, events):
    small = events.slice(0, 1000)
    packed = tmp_path / "zstd.arrow"
    with ipc.new_file(packed, small.schema, options=ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(small)
    with pytest.raises(ValueError, match="compressed"):
        map_ipc(packed)
    cut = tmp_path / "cut.arrow"
    whole = synth.write_ipc(tmp_path / "whole.arrow", 1000).read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptFile, match=r"cut\.arrow"):
        map_ipc(cut)
    with pytest.raises(FileNotFoundError, match="no Arrow IPC file"):
        map_ipc(tmp_path / "nothing.arrow")


# --- shared memory ---


def _span(table: pa.Table) -> int:
    found = regions(table)
    return max(r.end for r in found) - min(r.address for r in found)


def test_a_shared_table_round_trips_as_read_only_views_of_one_block(events):
    with SharedTable(events) as shared, attach(shared.name) as table:
        assert table.equals(events)
        assert _span(table) <= shared.nbytes, "the columns lie in one block of the stream's size: views of it"
        values = table["amount"].chunk(0).to_numpy()
        assert not values.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            values[0] = 1.0


def test_the_creator_unlinks_and_views_outlive_the_name(events):
    shared = SharedTable(events.slice(0, 1000))
    with attach(shared.name) as table:
        pass
    shared.close()
    shared.close()  # idempotent
    assert table.num_rows == 1000 and pc.sum(table["amount"]).as_py() > 0, "the mapping lives as long as its views"
    with pytest.raises(FileNotFoundError, match="closed by its creator"), attach(shared.name):
        pass
    if LINUX:
        assert not os.path.exists(f"/dev/shm/{shared.name}")
    assert "closed" in repr(shared)


def test_a_shared_table_takes_tables_only():
    with pytest.raises(TypeError, match=r"pyarrow\.Table"):
        SharedTable(pl.DataFrame({"a": [1]}))


@pytest.fixture(scope="module")
def consumer():
    with Consumer() as c:
        yield c


def test_another_process_gets_the_same_table_three_ways(consumer, events, ipc_file):
    expected = pc.sum(events["amount"]).as_py()
    with SharedTable(events) as shared:
        receipts = [
            consumer.send_pickled(events, "amount"),
            consumer.send_shared(shared, "amount"),
            consumer.send_file(ipc_file, "amount"),
        ]
    for r in receipts:
        assert r.rows == events.num_rows and r.total == pytest.approx(expected), r.how
    pickled, by_name, by_file = receipts
    assert pickled.copied_bytes > 0.99 * events.nbytes, "unpickling rebuilds every buffer in the consumer"
    for r in (by_name, by_file):
        assert r.copied_bytes == 0, f"{r.how}: the consumer copied"
        if LINUX:
            assert r.mapped_growth > 0, f"{r.how}: the column summed was read from shared pages"


def test_a_dead_consumer_is_reported():
    consumer = Consumer()
    consumer._process.kill()
    consumer._process.join()
    with pytest.raises(RuntimeError, match="not running"):
        consumer.send_pickled(pa.table({"a": [1]}))
    consumer.close()


# --- columns into torch ---


def test_numeric_columns_become_tensors_over_their_own_buffer(events):
    amount = events["amount"].chunk(0)
    t = column_to_tensor(amount, name="amount")
    assert_zero_copy(amount, t)
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(amount.to_numpy()))
    part = amount.slice(1000, 50)
    assert_zero_copy(amount, column_to_tensor(part))
    assert column_to_tensor(part)[0].item() == part[0].as_py()
    ts = column_to_tensor(events["ts"].chunk(0))
    assert ts.dtype == torch.int64
    assert_zero_copy(events["ts"].chunk(0), ts)


def test_polars_series_match_polars_own_to_torch(events):
    df = pl.from_arrow(events.combine_chunks())
    copies = []
    t = column_to_tensor(df["match_score"], copies=copies)
    assert torch.equal(t, df["match_score"].to_torch()) and not copies
    assert_zero_copy(df["match_score"], t)


def test_every_copy_is_named_and_can_be_refused(events):
    device = events["device_id"].chunk(0)
    with pytest.raises(CopyRequired, match=r"'device_id' needs a copy .*nulls.*fill_null"):
        column_to_tensor(device, name="device_id")
    copies = []
    filled = column_to_tensor(device, name="device_id", fill_null=-1, copies=copies)
    assert (filled == -1).sum().item() == device.null_count and [c.reason for c in copies] == ["nulls filled with -1"]
    with pytest.raises(CopyRequired, match="nulls"):
        column_to_tensor(device, name="device_id", fill_null=-1, allow_copy=False)
    with pytest.raises(CopyRequired, match="several chunks"):
        column_to_tensor(events["amount"], allow_copy=False)
    writable = column_to_tensor(events["amount"].chunk(0), writable=True, copies=copies)
    assert not shares_memory(events["amount"].chunk(0), writable)
    assert copies[-1].reason.startswith("a writable copy")
    flags = column_to_tensor(pa.array([True, None, False]), fill_null=False, copies=copies)
    assert flags.tolist() == [True, False, False] and copies[-1].reason == "booleans unpacked from bits"


def test_strings_become_codes_into_a_fixed_vocabulary(events):
    country = events["country"].chunk(0)
    with pytest.raises(CopyRequired, match="categories"):
        column_to_tensor(country, name="country")
    codes = column_to_tensor(country, name="country", categories=synth.COUNTRIES)
    assert [synth.COUNTRIES[i] for i in codes[:20]] == country.slice(0, 20).to_pylist()
    with pytest.raises(ValueError, match=r"'column' has values not in categories \['DE', 'FR'\]: \['"):
        column_to_tensor(country, categories=("DE", "FR"))
    missing = pa.array(["GB", None])
    assert column_to_tensor(missing, categories=synth.COUNTRIES, fill_null=-1).tolist() == [0, -1]


def test_batch_to_tensors_reports_its_copies(events):
    batch = events.to_batches()[0]
    tensors, copies = batch_to_tensors(
        batch, ["amount", "device_id", "country"], fill_null={"device_id": 0}, categories={"country": synth.COUNTRIES}
    )
    assert set(tensors) == {"amount", "device_id", "country"}
    assert {c.column for c in copies} == {"device_id", "country"}
    with pytest.raises(KeyError, match="'nope'"):
        batch_to_tensors(batch, ["nope"])
    with pytest.raises(TypeError, match="list<item: int64>"):
        column_to_tensor(pa.array([[1], [2]]))
