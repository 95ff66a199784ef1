import multiprocessing
import time

from common import bench


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_our_own_work_is_not_counted_as_others_load():
    with bench.core_load() as idle:  # what the rest of the machine does anyway
        time.sleep(0.5)
    with bench.core_load() as load:
        _spin(0.5)
    assert load.seconds >= 0.5
    # had our spinning been counted, a quiet machine would read about one core more than while we slept
    assert load.others_busy < idle.others_busy + 0.5, f"our own spinning was counted: {load} against {idle}"


def test_a_process_spinning_beside_us_is_seen_as_about_one_core():
    proc = multiprocessing.get_context("spawn").Process(target=_spin, args=(3.0,))
    proc.start()
    try:
        time.sleep(1.0)  # past the child's interpreter start-up
        with bench.core_load() as load:
            time.sleep(1.0)
    finally:
        proc.join()
    assert 0.7 < load.others_busy <= load.cores, load
    assert load.free == max(1.0, load.cores - load.others_busy)
