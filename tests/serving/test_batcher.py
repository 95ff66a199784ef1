import asyncio
import random
import time

import pytest

from common.serving.batcher import BatcherClosed, BatchPolicy, DeadlineExceeded, DynamicBatcher, QueueFull


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


async def started(compute, **policy) -> DynamicBatcher:
    b = DynamicBatcher(compute, BatchPolicy(**policy))
    await b.start()
    return b


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
    assert all(len(batch) <= 2 for batch in rec.batches), rec.batches  # 3 x 100 tokens > 250
    assert sorted(rec.computed) == list(range(5))


def test_a_request_past_its_deadline_gets_504_and_is_never_computed():
    async def main():
        rec = Recorder()
        rec.gate = asyncio.Event()
        b = await started(rec, max_batch_size=1, max_queue_delay_ms=0)
        busy = asyncio.ensure_future(b.submit([1], [5], 10))  # holds the only model slot
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(b.submit([2], [5], 0.1))
        await asyncio.sleep(0.3)
        rec.gate.set()
        await busy
        with pytest.raises(DeadlineExceeded, match="past its deadline"):
            await late
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


def test_a_full_queue_refuses_at_once_with_a_retry_hint():
    async def main():
        rec = Recorder()
        rec.gate = asyncio.Event()
        b = await started(rec, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
        held = [asyncio.ensure_future(b.submit([0], [5], 10))]  # taken by the model, which is held back
        await asyncio.sleep(0.05)
        held += [asyncio.ensure_future(b.submit([i], [5], 10)) for i in (1, 2)]  # fill the queue
        await asyncio.sleep(0.05)
        assert b.queue_size == 2
        t0 = time.monotonic()
        with pytest.raises(QueueFull, match="queue is full") as info:
            await b.submit([9], [5], 10)
        refused_in = time.monotonic() - t0
        rec.gate.set()
        await asyncio.gather(*held)
        await b.close()
        return info.value, refused_in

    exc, refused_in = run(main())
    assert exc.retry_after_s >= 1
    assert refused_in < 0.05, "a full queue must answer at once, not after waiting"


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


def test_close_finishes_running_batches_and_refuses_the_rest():
    async def main():
        rec = Recorder(seconds=0.1)
        b = await started(rec, max_batch_size=1, max_queue_delay_ms=0)
        running = asyncio.ensure_future(b.submit([1], [5], 10))
        await asyncio.sleep(0.02)
        queued = asyncio.ensure_future(b.submit([2], [5], 10))
        await asyncio.sleep(0.01)
        await b.close()
        with pytest.raises(BatcherClosed):
            await b.submit([3], [5], 10)
        return await running, await asyncio.gather(queued, return_exceptions=True)

    running, (queued,) = run(main())
    assert running == [10]
    assert isinstance(queued, BatcherClosed | list)  # queued work either ran or was told why, never lost


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
