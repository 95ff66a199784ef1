"""Dynamic batching on the event loop.

Requests wait in a bounded queue; one loop task turns them into batches and
hands each batch to a compute function that runs off the loop. The rules:

- a batch goes as soon as it is full (`max_batch_size` rows, or
  `max_batch_tokens` padded tokens), or when the *oldest* waiting request has
  waited `max_queue_delay_ms` (Triton's rule: timing from the start of
  collection instead, as LitServe does, lets a request wait up to twice the delay);
- a full queue refuses at once (`QueueFull`, a 429), rather than letting latency grow without bound;
- a request whose deadline passes while queued (also while every model slot is busy) fails with
  `DeadlineExceeded` (a 504) at once and is never computed;
- a request whose caller has gone (its awaiting task was cancelled) is dropped before compute;
- under load, the batch is the oldest request plus the waiting requests closest
  to it in length, so a batch pads less; the oldest always goes, so none starves;
  the requests searched are the oldest ones holding `length_window` batches' worth of texts;
- `close()` finishes the batches already computing and fails every request still queued (`BatcherClosed`);
- each request gets exactly its own results back, in its own order.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


FIRST_BATCH_SECONDS = 0.05  # a batch's compute time assumed before one has been timed
BATCH_SECONDS_WEIGHT = 0.2  # weight of the newest batch in the running mean of compute time


class QueueFull(Exception):
    """The queue is at `max_queue_size`: the caller should retry later (HTTP 429)."""

    def __init__(self, size: int, retry_after_s: float):
        super().__init__(f"the queue is full ({size} requests waiting); retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before its batch ran; it was not computed (HTTP 504)."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new work (HTTP 503)."""


class BatcherObserver(Protocol):
    """What the batcher reports, for metrics; every method must be cheap and never raise."""

    def queue_depth(self, requests: int) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def batch_done(
        self, rows: int, padded_tokens: int, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None: ...


class _NullObserver:
    def queue_depth(self, requests: int) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def batch_done(self, rows: int, padded_tokens: int, queue_seconds: Sequence[float], compute_seconds: float) -> None:
        pass


@dataclass(eq=False)
class _Pending(Generic[Item, Result]):
    items: Sequence[Item]
    longest: int  # tokens of the longest item: what padding rounds the batch up to
    enqueued: float
    deadline: float
    future: asyncio.Future[list[Result]] = field(repr=False)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 5.0
    max_batch_tokens: int = 8192
    max_queue_size: int = 256
    length_window: int = (
        4  # batches' worth of waiting texts (length_window * max_batch_size) searched for similar lengths
    )

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_batch_tokens < 1 or self.length_window < 1:
            raise ValueError(f"batch policy sizes must be >= 1: {self}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")


class DynamicBatcher(Generic[Item, Result]):
    """Collects requests into batches for `compute`, an async function that runs a batch off the loop.

    `compute(items)` must return one result per item, in order. Start the batcher with
    `await start()` inside a running loop (e.g. an ASGI lifespan) and stop it with `await close()`.
    """

    def __init__(
        self,
        compute: Callable[[list[Item]], Awaitable[list[Result]]],
        policy: BatchPolicy | None = None,
        *,
        concurrency: int = 1,
        observer: BatcherObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.compute = compute
        self.policy = policy or BatchPolicy()
        self.observer = observer or _NullObserver()
        self._clock = clock
        self._pending: list[_Pending[Item, Result]] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._batch_seconds = FIRST_BATCH_SECONDS  # running estimate of one batch's compute time, for Retry-After

    # --- public ------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def submit(self, items: Sequence[Item], lengths: Sequence[int], timeout_s: float) -> list[Result]:
        """Queue one request's items (with their token lengths) and wait for their results.

        Raises QueueFull at once when the queue is full, DeadlineExceeded when
        `timeout_s` passes before compute starts, BatcherClosed after close().
        """
        if self._closing or self._loop_task is None:
            raise BatcherClosed("the batcher is not running")
        if not items or len(items) != len(lengths):
            raise ValueError(f"need one length per item and at least one item, got {len(items)} and {len(lengths)}")
        self.admit()
        now = self._clock()
        pending = _Pending(items, max(lengths), now, now + timeout_s, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self.observer.queue_depth(len(self._pending))
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # the caller went away: mark it so the loop drops it before compute
            if not pending.future.done():
                pending.future.cancel()
            raise

    def admit(self) -> None:
        """Raise QueueFull now if a request would be refused: lets a server refuse before it
        spends anything (tokenising) on a request it cannot queue."""
        if len(self._pending) >= self.policy.max_queue_size:
            self.observer.rejected("queue_full")
            raise QueueFull(len(self._pending), self.retry_after_s())

    def retry_after_s(self) -> float:
        """What a refused client should wait: the batches the waiting requests make (requests / max_batch_size)
        times a batch's running-mean compute time (BATCH_SECONDS_WEIGHT), rounded up to whole seconds, >= 1."""
        batches_ahead = len(self._pending) / self.policy.max_batch_size
        return max(1.0, math.ceil(batches_ahead * self._batch_seconds))

    async def close(self) -> None:
        """Stop taking work, finish the batches already running, fail what is still queued."""
        self._closing = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(BatcherClosed("the server is shutting down"))
        self._pending.clear()

    # --- the loop ----------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            self._drop_dead()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = self._clock()
            wait = min(self._seconds_until_due(now), min(p.deadline for p in self._pending) - now)
            if wait > 0:  # nothing due yet: sleep until the batch is due, a deadline passes, or news arrives
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                continue
            if self._seconds_until_due(self._clock()) > 0:
                continue  # woken by a deadline, not by the batch being due: drop the expired, then wait again
            # a free model slot: a batch formed now is as full as it can be; while every slot is busy the
            # waiting requests' deadlines still run, so wait no longer than the earliest of them
            if not await self._slot_before(min(p.deadline for p in self._pending)):
                continue  # a deadline passed while the model was busy: drop the expired, then wait again
            if self._closing:  # close() was called while we waited: what is queued is failed, not computed
                self._slots.release()
                break
            self._drop_dead()
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _slot_before(self, deadline: float) -> bool:
        """Take a model slot, unless `deadline` (on the batcher's clock) passes first."""
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(0.0, deadline - self._clock()))
        except TimeoutError:
            return False
        return True

    def _drop_dead(self) -> None:
        """Remove requests whose caller left or whose deadline passed."""
        now = self._clock()
        alive = []
        for p in self._pending:
            if p.future.done():  # cancelled by a caller that disconnected
                self.observer.rejected("client_disconnected")
            elif now >= p.deadline:
                self.observer.rejected("deadline")
                p.future.set_exception(
                    DeadlineExceeded(f"waited {now - p.enqueued:.3f} s in the queue, past its deadline")
                )
            else:
                alive.append(p)
        if len(alive) != len(self._pending):
            self._pending = alive
            self.observer.queue_depth(len(alive))

    def _seconds_until_due(self, now: float) -> float:
        """0 when a batch should go now: full, or the oldest request has waited long enough."""
        rows = tokens = longest = 0
        for p in self._pending:
            rows += len(p.items)
            longest = max(longest, p.longest)
            tokens = rows * longest
            if rows >= self.policy.max_batch_size or tokens >= self.policy.max_batch_tokens:
                return 0.0
        return max(0.0, self._pending[0].enqueued + self.policy.max_queue_delay_ms / 1e3 - now)

    def _take_batch(self) -> list[_Pending[Item, Result]]:
        """The oldest request, then waiting requests nearest to it in length, while they fit."""
        if not self._pending:
            return []
        window, texts = [], 0
        for p in self._pending:  # the oldest requests holding length_window batches' worth of texts
            if texts >= self.policy.length_window * self.policy.max_batch_size:
                break
            window.append(p)
            texts += len(p.items)
        oldest = window[0]
        batch = [oldest]
        rows, longest = len(oldest.items), oldest.longest
        for p in sorted(window[1:], key=lambda p: (abs(p.longest - oldest.longest), p.enqueued)):
            new_rows, new_longest = rows + len(p.items), max(longest, p.longest)
            if new_rows > self.policy.max_batch_size or new_rows * new_longest > self.policy.max_batch_tokens:
                continue
            batch.append(p)
            rows, longest = new_rows, new_longest
        chosen = set(map(id, batch))
        self._pending = [p for p in self._pending if id(p) not in chosen]
        self.observer.queue_depth(len(self._pending))
        batch.sort(key=lambda p: p.enqueued)
        return batch

    async def _execute(self, batch: list[_Pending[Item, Result]]) -> None:
        try:
            items = [item for p in batch for item in p.items]
            start = self._clock()
            queue_seconds = [start - p.enqueued for p in batch]
            try:
                results = await self.compute(items)
                if len(results) != len(items):
                    raise RuntimeError(f"compute returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # every request of the batch learns why
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            elapsed = self._clock() - start
            self._batch_seconds += BATCH_SECONDS_WEIGHT * (elapsed - self._batch_seconds)
            self.observer.batch_done(len(items), len(items) * max(p.longest for p in batch), queue_seconds, elapsed)
            offset = 0
            for p in batch:
                n = len(p.items)
                if not p.future.done():  # the caller may have left while its batch ran
                    p.future.set_result(results[offset : offset + n])
                offset += n
        finally:
            self._slots.release()
            self._wakeup.set()
