import asyncio
import math
import random
import time

import pytest

from common.serving.batcher import (
    BATCH_SECONDS_WEIGHT,
    FIRST_BATCH_SECONDS,
    BatcherClosed,
    BatchPolicy,
    DeadlineExceeded,
    DynamicBatcher,
    QueueFull,
)


class Recorder:
    """A compute function that records its batches and can be held back."""

    def __init__(self, seconds: float = 0.0):
        self.batches: list[list[int]] = []
        self.times: list[float] = []
        self.seconds = seconds
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.times.append(time.monotonic())
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model exploded")
        return [i * 10 for i in items]

    @property
    def computed(self) -> list[int]:
        return [i for b in self.batches for i in b]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


async def started(compute, clock=time.monotonic, **policy) -> DynamicBatcher:
    b = DynamicBatcher(compute, BatchPolicy(**policy), clock=clock)
    await b.start()
    return b


async def until(condition, timeout: float = 5.0) -> None:
    """Let the loop run until `condition()` holds (a test step, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the batcher never got there"
        await asyncio.sleep(0.001)


def test_a_full_batch_goes_at_once():
    async def main():
        rec = Recorder()
        b = await started(rec, max_batch_size=4, max_queue_delay_ms=5_000)
        t0 = time.monotonic()
        results = await asyncio.gather(*(b.submit([i], [5], 10) for i in range(4)))
        await b.close()
        return rec, results, time.monotonic() - t0

    rec, results, took = run(main())
    assert rec.batches == [[0, 1, 2, 3]]
    assert results == [[0], [10], [20], [30]]
    assert took < 1.0, "a full batch must not wait for the 5 s delay"


def test_the_delay_is_measured_from_the_oldest_request():
    async def main():
        rec = Recorder()
        b = await started(rec, max_batch_size=100, max_queue_delay_ms=200)
        t0 = time.monotonic()
        first = asyncio.ensure_future(b.submit([1], [5], 10))
        await asyncio.sleep(0.12)
        second = asyncio.ensure_future(b.submit([2], [5], 10))
        await asyncio.gather(first, second)
        await b.close()
        return rec, rec.times[0] - t0

    rec, dispatched_after = run(main())
    assert rec.batches == [[1, 2]]
    # Triton's rule: 200 ms after the oldest arrived, not 200 ms after the newest (which would be ~320 ms)
    assert 0.18 <= dispatched_after < 0.30, dispatched_after


def test_token_budget_closes_a_batch():
    async def main():
        rec = Recorder()
        b = await started(rec, max_batch_size=100, max_queue_delay_ms=50, max_batch_tokens=250)
        await asyncio.gather(*(b.submit([i], [100], 10) for i in range(5)))
        await b.close()
        return rec

    rec = run(main())
    # 2 x 100 padded tokens fit in 250 and 3 x 100 do not: batches fill to the budget, the last one goes on the delay
    assert rec.batches == [[0, 1], [2, 3], [4]]


def test_a_request_past_its_deadline_gets_504_while_the_model_is_still_busy():
    async def main():
        rec = Recorder()
        rec.gate = asyncio.Event()
        b = await started(rec, max_batch_size=1, max_queue_delay_ms=0)
        busy = asyncio.ensure_future(b.submit([1], [5], 10))  # holds the only model slot
        await until(lambda: rec.batches)
        late = asyncio.ensure_future(b.submit([2], [5], 0.1))
        with pytest.raises(DeadlineExceeded, match="past its deadline"):
            await asyncio.wait_for(late, timeout=5)  # answered while the model is still held
        assert not busy.done() and not rec.gate.is_set()
        rec.gate.set()
        assert await busy == [10]
        await b.close()
        return rec

    rec = run(main())
    assert rec.computed == [1], "the expired request must not reach the model"


def test_a_caller_that_leaves_is_dropped_before_compute():
    async def main():
        rec = Recorder()
        rec.gate = asyncio.Event()
        b = await started(rec, max_batch_size=1, max_queue_delay_ms=0)
        busy = asyncio.ensure_future(b.submit([1], [5], 10))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b.submit([2], [5], 10))
        stays = asyncio.ensure_future(b.submit([3], [5], 10))
        await asyncio.sleep(0.05)
        gone.cancel()
        rec.gate.set()
        assert await busy == [10] and await stays == [30]
        await b.close()
        return rec

    rec = run(main())
    assert rec.computed == [1, 3]


class ManualClock:
    """The batcher's clock, moved by the test: batch times are what the script says."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_full_queue_refuses_at_once_with_the_retry_hint_its_queue_implies():
    clock = ManualClock()

    async def main():
        gate = asyncio.Event()
        batches = []

        async def compute(items):  # each batch takes 10 s on the batcher's clock; from the second on, held
            batches.append(items)
            if len(batches) > 1:
                await gate.wait()
            clock.now += 10.0
            return items

        b = await started(compute, clock, max_batch_size=2, max_queue_delay_ms=0, max_queue_size=4)
        assert b.retry_after_s() == 1, "nothing waiting: the 1 s floor"
        await b.submit([0], [5], 1e6)  # one batch timed: 10 s
        held = [asyncio.ensure_future(b.submit([1], [5], 1e6))]  # takes the model, which is held back
        await until(lambda: len(batches) == 2)
        held += [asyncio.ensure_future(b.submit([i], [5], 1e6)) for i in range(2, 6)]  # fill the queue
        await until(lambda: b.queue_size == 4)
        refused = b.submit([9], [5], 1e6)
        with pytest.raises(QueueFull, match=r"queue is full \(4 requests waiting\); retry in 5 s") as info:
            refused.send(None)  # raises on its first step: a full queue never makes a caller wait
        gate.set()
        await asyncio.gather(*held)
        await b.close()
        return info.value, batches

    exc, batches = run(main())
    mean = FIRST_BATCH_SECONDS + BATCH_SECONDS_WEIGHT * (10.0 - FIRST_BATCH_SECONDS)  # after one 10 s batch: 2.04 s
    assert exc.retry_after_s == math.ceil(4 / 2 * mean) == 5, "4 waiting in batches of 2: two batches of ~2 s ahead"
    assert [9] not in batches


def test_every_request_gets_exactly_its_own_results_in_order():
    async def main():
        rec = Recorder(seconds=0.002)
        b = await started(rec, max_batch_size=8, max_queue_delay_ms=2)
        rng = random.Random(0)
        requests = []
        for r in range(60):
            n = rng.randint(1, 5)
            requests.append(([r * 100 + k for k in range(n)], [rng.randint(3, 60) for _ in range(n)]))

        async def one(items, lengths):
            await asyncio.sleep(rng.random() * 0.05)
            return await b.submit(items, lengths, 10)

        results = await asyncio.gather(*(one(i, ln) for i, ln in requests))
        await b.close()
        return rec, requests, results

    rec, requests, results = run(main())
    for (items, _), got in zip(requests, results, strict=True):
        assert got == [i * 10 for i in items]
    assert sorted(rec.computed) == sorted(i for items, _ in requests for i in items), "each item computed once"
    assert max(len(batch) for batch in rec.batches) > 1, "concurrent requests should have been batched"


def test_under_load_a_batch_groups_similar_lengths_and_keeps_the_oldest():
    async def main():
        rec = Recorder()
        rec.gate = asyncio.Event()
        b = await started(rec, max_batch_size=3, max_queue_delay_ms=0)
        first = asyncio.ensure_future(b.submit([0], [50], 10))  # occupies the model
        await asyncio.sleep(0.05)
        lengths = {1: 10, 2: 100, 3: 12, 4: 98, 5: 11, 6: 99}
        waiting = [asyncio.ensure_future(b.submit([i], [n], 10)) for i, n in lengths.items()]
        await asyncio.sleep(0.05)
        rec.gate.set()
        await asyncio.gather(first, *waiting)
        await b.close()
        return rec

    rec = run(main())
    assert rec.batches[1] == [1, 3, 5], "oldest (10 tokens) with its nearest lengths (11, 12)"
    assert rec.batches[2] == [2, 4, 6]


def test_a_failing_batch_fails_each_of_its_requests():
    async def main():
        rec = Recorder()
        rec.fail = True
        b = await started(rec, max_batch_size=4, max_queue_delay_ms=20)
        results = await asyncio.gather(*(b.submit([i], [5], 10) for i in range(3)), return_exceptions=True)
        await b.close()
        return results

    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in run(main()))


def test_close_finishes_running_batches_and_fails_what_is_queued():
    async def main():
        rec = Recorder()
        rec.gate = asyncio.Event()
        b = await started(rec, max_batch_size=1, max_queue_delay_ms=0)
        running = asyncio.ensure_future(b.submit([1], [5], 10))
        await until(lambda: rec.batches)
        queued = asyncio.ensure_future(b.submit([2], [5], 10))
        await until(lambda: b.queue_size == 1)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.01)  # close() has begun; the model is still busy with the running batch
        rec.gate.set()
        await closing
        with pytest.raises(BatcherClosed):
            await b.submit([3], [5], 10)
        with pytest.raises(BatcherClosed, match="shutting down"):
            await queued
        return rec, await running

    rec, running = run(main())
    assert running == [10], "the running batch finishes"
    assert rec.computed == [1], "what was queued at close() is failed (and told why), not computed"


def test_the_length_window_counts_texts_not_requests():
    async def main():
        rec = Recorder()
        rec.gate = asyncio.Event()
        b = await started(rec, max_batch_size=4, max_queue_delay_ms=0, length_window=1)
        first = asyncio.ensure_future(b.submit([0], [50], 10))  # occupies the model
        await until(lambda: rec.batches)
        waiting = [  # oldest first: 10 tokens; three texts of 100; then two texts nearer to 10 in length
            asyncio.ensure_future(b.submit(items, lengths, 10))
            for items, lengths in (([1], [10]), ([2, 3, 4], [100] * 3), ([5], [12]), ([6], [11]))
        ]
        await until(lambda: b.queue_size == 4)
        rec.gate.set()
        await asyncio.gather(first, *waiting)
        await b.close()
        return rec

    rec = run(main())
    # one batch's worth of texts (4) holds only the first two requests: the nearer lengths behind them are not searched
    assert rec.batches[1:] == [[1, 2, 3, 4], [5, 6]]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        BatchPolicy(max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue_delay_ms"):
        BatchPolicy(max_queue_delay_ms=-1)

    async def main():
        b = await started(Recorder())
        with pytest.raises(ValueError, match="one length per item"):
            await b.submit([1, 2], [5], 10)
        await b.close()

    run(main())
