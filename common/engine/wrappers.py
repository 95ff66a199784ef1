"""Capabilities added by composition: each wrapper is itself a `Runtime` that
holds another, so timing or caching is stacked on any runtime without touching
its class (and without a subclass per combination)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from common.engine.runtime import Runtime

if TYPE_CHECKING:
    from common.bench import Timing


class _Delegating:
    def __init__(self, inner: Runtime):
        self.inner = inner
        self.model = inner.model
        self.device = inner.device

    @property
    def name(self) -> str:
        return self.inner.name

    def close(self) -> None:
        self.inner.close()


class TimedRuntime(_Delegating):
    """Records the wall time of the last `keep` calls of the runtime it wraps."""

    def __init__(self, inner: Runtime, keep: int = 10_000):
        super().__init__(inner)
        self._seconds: deque[float] = deque(maxlen=keep)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        try:
            return self.inner.run(inputs)
        finally:
            self._seconds.append(time.perf_counter() - start)

    @property
    def calls(self) -> int:
        return len(self._seconds)

    def timing(self) -> Timing:
        from common.bench import Timing  # imported here: common.bench pulls in torch, the engine must not

        return Timing(f"{self.inner.name} ({self.model.name})", tuple(self._seconds))


class CachedRuntime(_Delegating):
    """Returns stored outputs for a batch seen before (keyed by a hash of its bytes).

    Worth it where identical requests repeat (health probes, popular queries);
    `maxsize` bounds memory, evicting the least recently used batch.
    """

    def __init__(self, inner: Runtime, maxsize: int = 1024):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        super().__init__(inner)
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[bytes, dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(inputs: Mapping[str, np.ndarray]) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(inputs):
            arr = np.ascontiguousarray(inputs[name])
            h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
            h.update(arr.data)
        return h.digest()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = self._key(inputs)
        with self._lock:
            if key in self._cache:
                self.hits += 1
                self._cache.move_to_end(key)
                return {k: v.copy() for k, v in self._cache[key].items()}
            self.misses += 1
        out = self.inner.run(inputs)
        with self._lock:
            self._cache[key] = {k: v.copy() for k, v in out.items()}
            if len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return out

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        super().close()
