"""The engine: a codec and a runtime composed, with a managed lifecycle.

It depends on the `Runtime` and `Codec` protocols only (no torch import), so a
test can hand it a stub runtime and a new backend needs no change here.
Heavy resources (the runtime's weights, the worker thread) are acquired in
`start()`, released in `close()`, and `with Engine(...)` does both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, Self

from common.engine.codec import Codec, Req, Resp
from common.engine.model import Model
from common.engine.runtime import Runtime, create_runtime


class EngineClosed(RuntimeError):
    """Raised when a closed (or never started) engine is asked to work."""


class Engine(Generic[Req, Resp]):
    def __init__(self, runtime: Runtime, codec: Codec[Req, Resp], *, workers: int = 1, warmup: int = 2):
        if workers < 1 or warmup < 0:
            raise ValueError(f"need workers >= 1 and warmup >= 0, got workers={workers}, warmup={warmup}")
        self.runtime = runtime
        self.codec = codec
        self.workers = workers
        self.warmup_runs = warmup
        self.warmup_seconds: float | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def model(self) -> Model:
        return self.runtime.model

    @property
    def started(self) -> bool:
        return self._pool is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> Self:
        """Warm the runtime up (first calls pay for allocation, JIT, compile) and
        start the worker pool. Calling it twice is harmless."""
        with self._lock:
            if self._closed:
                raise EngineClosed(f"engine for {self.model.name!r} is closed; create a new one")
            if self._pool is not None:
                return self
            start = time.perf_counter()
            for i in range(self.warmup_runs):
                self.runtime.run(self.model.example_inputs(batch=2, seed=i))
            self.warmup_seconds = time.perf_counter() - start
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"engine-{self.model.name}")
        return self

    def infer(self, requests: Sequence[Req]) -> list[Resp]:
        """Encode, run and decode one batch on the calling thread."""
        self._check_running()
        return self._infer(requests)

    def submit(self, requests: Sequence[Req]) -> Future[list[Resp]]:
        """Run `infer` on the engine's own worker thread and return a future.

        Work submitted before `close()` still completes: close waits for it."""
        with self._lock:
            self._check_running()
            assert self._pool is not None
            return self._pool.submit(self._infer, requests)

    def _infer(self, requests: Sequence[Req]) -> list[Resp]:
        return self.codec.decode(self.runtime.run(self.codec.encode(requests)))

    def close(self) -> None:
        """Finish queued work, stop the workers, release the runtime. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.runtime.close()

    def _check_running(self) -> None:
        if self._closed:
            raise EngineClosed(f"engine for {self.model.name!r} is closed; create a new one")
        if self._pool is None:
            raise EngineClosed(f"engine for {self.model.name!r} is not started: call start() or use `with engine:`")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.started else "created"
        return f"Engine({self.model.name!r}, runtime={self.runtime.name!r}, device={self.runtime.device!r}, {state})"


def build_engine(
    model: Model,
    codec: Codec[Req, Resp],
    *,
    runtime: str = "torch-eager",
    device: str = "auto",
    workers: int = 1,
    warmup: int = 2,
    **runtime_options: object,
) -> Engine[Req, Resp]:
    """One call from names to an engine: `build_engine(model, codec, runtime="torch-compile")`."""
    return Engine(
        create_runtime(runtime, model, device=device, **runtime_options), codec, workers=workers, warmup=warmup
    )
