"""What one running embeddings server owns, and its lifecycle: made, started and closed by the app's lifespan.

The model loads in the background after start-up, so `/healthz` answers at once and `/readyz` says
503 until the model is loaded and warmed up. Nothing here is global: two apps in one process (tests,
notebooks) each have their own metrics, engine and batcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from common.engine import Engine
from common.serving.batcher import DynamicBatcher
from common.serving.errors import ModelNotReady
from common.serving.loading import load_engine
from common.serving.metrics import ServingMetrics, watch_loop_lag
from common.serving.schemas import ModelCard
from common.serving.settings import ServingSettings

log = logging.getLogger("common.serving")

Batcher = DynamicBatcher[list[int], np.ndarray]


@runtime_checkable
class TextCodec(Protocol):
    """What the server needs of an engine's codec besides encode/decode: texts to token ids, validated
    (`InvalidRequest`, `RequestTooLarge`), as `common.engine.embedding.EmbeddingCodec` does."""

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...


class ServingState:
    """Settings, metrics, the engine and its batcher of one app. `engine`: a ready engine (tests pass a
    stub) instead of one built from the settings."""

    def __init__(self, settings: ServingSettings, engine: Engine | None = None):
        self.settings = settings
        self.metrics = ServingMetrics()
        self.engine = engine
        self.codec: TextCodec | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.started_at = int(time.time())
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def model(self) -> tuple[TextCodec, Batcher]:
        """The warmed-up model's codec and batcher; ModelNotReady (503) while loading or after a failed load."""
        if self.batcher is None or self.codec is None:
            if self.load_error:
                raise ModelNotReady(f"model failed to load ({self.load_error})")
            raise ModelNotReady("model is still loading", headers={"Retry-After": "1"})
        return self.codec, self.batcher

    @property
    def dimensions(self) -> int | None:
        """Length of the served model's embeddings, from its declared output (None if it does not say)."""
        if self.engine is None:
            return None
        return self.engine.model.outputs[0].shape[-1]

    def model_card(self) -> ModelCard:
        return ModelCard(id=self.settings.model_name, created=self.started_at)

    async def start(self) -> None:
        """Start watching the loop's lag and loading the model; returns at once."""
        self._tasks.append(asyncio.create_task(watch_loop_lag(self.metrics)))
        self._tasks.append(asyncio.create_task(self._load()))

    async def _load(self) -> None:
        try:
            if self.engine is None:
                self.engine = await asyncio.to_thread(load_engine, self.settings)
            if not isinstance(self.engine.codec, TextCodec):
                raise TypeError(f"the engine's codec ({type(self.engine.codec).__name__}) cannot tokenize texts")
            self.codec = self.engine.codec
            await asyncio.to_thread(self.engine.start)  # warm-up off the loop: /healthz stays responsive
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        engine = self.engine

        async def compute(rows: list[list[int]]) -> list[np.ndarray]:
            return await asyncio.wrap_future(engine.submit(rows))

        batcher = DynamicBatcher(
            compute, self.settings.policy(), concurrency=self.settings.model_copies, observer=self.metrics
        )
        await batcher.start()
        self.batcher = batcher
        self.metrics.ready.set(1)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.close()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
