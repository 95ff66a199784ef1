import threading
import time
import timeit

import numpy as np
import pytest
import torch

from common import bench


def test_timing_statistics():
    t = bench.Timing("x", (1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0
    assert t.min == 1.0
    assert t.p10 < t.median < t.p90
    row = t.row()
    assert row["median_ms"] == pytest.approx(3000.0)
    assert row["samples"] == 5


def test_empty_timing_is_rejected():
    with pytest.raises(ValueError, match="no samples"):
        bench.Timing("x", ())


def test_measure_agrees_with_timeit():
    """The harness against the standard library's timer on the same work."""
    x = np.random.default_rng(0).standard_normal(200_000)

    def work():
        return np.sort(x)

    ours = bench.measure(work, warmup=2, repeat=15)
    theirs = min(timeit.repeat(work, number=ours.number, repeat=15)) / ours.number
    # min vs min: both are the least-disturbed sample of the same work; a factor of 2 allows for a busy
    # machine while still catching a harness that is off by its loop overhead or a unit
    assert 0.5 < ours.min / theirs < 2.0, (ours.min, theirs)


def test_measure_auto_batches_tiny_calls():
    t = bench.measure(lambda: None, repeat=5)
    assert t.number > 1, "a no-op must be batched so a sample outlasts the timer's resolution"
    assert t.median * t.number >= bench.MIN_SAMPLE_SECONDS * 0.5


@pytest.mark.parametrize("kwargs", [{"repeat": 0}, {"warmup": -1}, {"number": 0}, {"number": "many"}])
def test_measure_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError):
        bench.measure(lambda: None, **kwargs)


def test_compare_finds_the_faster_candidate():
    slow = lambda: time.sleep(0.004)  # noqa: E731
    fast = lambda: time.sleep(0.001)  # noqa: E731
    c = bench.compare(slow, fast, names=("slow", "fast"), repeat=8, number=1)
    assert c.speedup > 1.5
    assert c.baseline.name == "slow" and c.candidate.name == "fast"
    assert len(c.ratios) == 8
    assert set(c.row()) >= {"baseline_ms", "candidate_ms", "speedup"}


def test_compare_interleaves():
    order = []
    bench.compare(lambda: order.append("a"), lambda: order.append("b"), warmup=0, repeat=4, number=1)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_rows_for_a_table():
    t = bench.Timing("x", (0.001,))
    assert bench.rows([t]) == [t.row()]


def test_measure_memory_sees_numpy_allocations():
    _, usage = bench.measure_memory(lambda: np.ones(4_000_000))  # 32 MB
    assert usage.traced_peak_bytes >= 30e6


def test_leak_check_catches_leaked_threads_and_passes_clean_cycles():
    stop = threading.Event()
    leaked: list[threading.Thread] = []

    def leaky():
        t = threading.Thread(target=stop.wait, daemon=True)
        t.start()
        leaked.append(t)

    try:
        assert bench.leak_check(leaky, cycles=20, settle=0).thread_growth == 20
    finally:
        stop.set()
        for t in leaked:
            t.join()
    clean = bench.leak_check(lambda: threading.Thread(target=lambda: None).start(), cycles=50, settle=5)
    assert clean.thread_growth <= 0


def test_bandwidth_and_flops_formulas():
    t = bench.Timing("copy", (0.01,))
    assert bench.bandwidth_gbs(t, 10**9) == pytest.approx(200.0)  # 2 GB moved in 10 ms
    assert bench.matmul_gflops(bench.Timing("mm", (1.0,)), 1000) == pytest.approx(2.0)
    assert bench.bandwidth_gbs(bench.Timing("copy", (0.01, 0.02, 0.04)), 10**9, best=True) == pytest.approx(200.0)


def test_machine_ceilings_are_measured_once_and_plausible():
    c = bench.machine_ceilings()
    assert c is bench.machine_ceilings()
    assert c is bench.machine_ceilings(c.device), "'auto' and the device it resolves to share one measurement"
    # held to an independent measurement (NumPy's copy and OpenBLAS's matmul, best of a few, by timeit):
    # the same machine, so within a factor that a busy neighbour cannot push it past
    src = np.ones(32 * 2**20 // 8)
    dst = np.empty_like(src)
    np_copy_gbs = 2 * src.nbytes / min(timeit.repeat(lambda: np.copyto(dst, src), number=1, repeat=7)) / 1e9
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    np_gflops = 2 * 1024**3 / min(timeit.repeat(lambda: a @ a, number=1, repeat=5)) / 1e9
    assert 1 / 4 < c.bandwidth_gbs / np_copy_gbs < 4, (c.bandwidth_gbs, np_copy_gbs)
    assert 1 / 6 < c.matmul_gflops / np_gflops < 6, (c.matmul_gflops, np_gflops)
    assert c.ridge == pytest.approx(c.matmul_gflops / c.bandwidth_gbs)
    # the roofline: memory-bound left of the ridge, flat at the peak right of it
    assert c.attainable_gflops(c.ridge / 10) == pytest.approx(c.matmul_gflops / 10)
    assert c.attainable_gflops(c.ridge * 10) == c.matmul_gflops


def test_matmul_is_faster_per_flop_than_a_matrix_vector_product():
    """The roofline's claim, checked: at low intensity a kernel is memory-bound.

    One thread and interleaved timing keep the ratio stable while other tests
    load the machine (a 2-thread matmul beside another busy process is not)."""
    n = 2048  # a 16 MiB matrix: larger than the caches, so mv streams it from memory
    a, b, v = torch.randn(n, n), torch.randn(n, n), torch.randn(n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = bench.compare(lambda: torch.mm(a, b), lambda: torch.mv(a, v), repeat=5, number=1)
    finally:
        torch.set_num_threads(threads)
    mm_gflops = 2 * n**3 / c.baseline.median / 1e9
    mv_gflops = 2 * n**2 / c.candidate.median / 1e9
    assert mm_gflops > 1.5 * mv_gflops, (mm_gflops, mv_gflops)  # ~10x on a quiet machine, ~2.5x under heavy load


def test_plots_and_results_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ts = [bench.Timing("a", (0.001, 0.002)), bench.Timing("b", (0.003, 0.004))]
    assert bench.plot_timings(ts).get_xlabel().startswith("time per call")
    c = bench.Ceilings(20.0, 100.0, "cpu", 2)
    ax = bench.plot_roofline(c, {"add": (1 / 12, 1.5)})
    assert "roofline" in ax.get_title()
    path = bench.save_results(tmp_path / "r.json", bench.rows(ts), note="test")
    import json

    data = json.loads(path.read_text())
    assert data["results"][0]["name"] == "a" and data["meta"]["note"] == "test"
    assert "cpu" in data["machine"]


def test_process_memory_counts_private_pages_and_a_mapped_file(tmp_path):
    import mmap
    import os

    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(8 * 2**20))
    before = bench.process_memory()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB written: private pages of this process alone
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        _ = [mapped[i] for i in range(0, len(mapped), 4096)]  # touch every page of the file
        after = bench.process_memory(os.getpid(), mapped_file="weights.bin")
    assert block.sum() == block.size
    assert after.uss_bytes - before.uss_bytes > 60 * 2**20, "64 MiB written by this process alone is unique to it"
    assert after.uss_bytes <= after.pss_bytes <= after.rss_bytes
    assert after.file_resident_bytes == 8 * 2**20, "every page of the mapped file was touched"
    assert before.file_resident_bytes == 0, "no file named: nothing counted"
    row = after.row("weights")
    assert row["weights resident (MiB)"] == 8.0 and set(row) >= {"RSS (MiB)", "PSS (MiB)", "USS (MiB)"}
