"""IO: turning requests into model inputs and model outputs into responses.

A codec is where request validation lives, so a bad request fails with a
message that names the request and the field, before any compute is spent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Req_contra = TypeVar("Req_contra", contravariant=True)


class InvalidRequest(ValueError):
    """A request the codec cannot encode; `index` says which one in the batch."""

    def __init__(self, index: int, message: str):
        super().__init__(f"request {index}: {message}")
        self.index = index
        self.reason = message  # what was wrong, without the "request N: " prefix


class RequestTooLarge(InvalidRequest):
    """A well-formed request over one of the codec's size limits (a server answers 413, not 422)."""


class Codec(Protocol[Req_contra, Resp]):  # Resp is invariant: decode returns a list of it, and lists are invariant
    def encode(self, requests: Sequence[Req_contra]) -> dict[str, np.ndarray]: ...

    def decode(self, outputs: Mapping[str, np.ndarray]) -> list[Resp]: ...


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float


@dataclass(frozen=True)
class ClassificationCodec(Generic[Req]):
    """Feature vectors in, (label, probability) out, for a logits-producing classifier."""

    features: int
    labels: tuple[str, ...]
    input_name: str = "features"
    output_name: str = "logits"

    def encode(self, requests: Sequence[Sequence[float]] | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(requests, str | bytes) or not isinstance(requests, Sequence | np.ndarray):
            raise TypeError(f"expected a sequence of feature vectors, got {type(requests).__name__}")
        if isinstance(requests, np.ndarray) and requests.ndim != 2:
            raise TypeError(f"expected a 2-D array (batch, {self.features}), got shape {requests.shape}")
        if len(requests) == 0:
            raise ValueError("expected at least one request, got an empty batch")
        batch = np.empty((len(requests), self.features), dtype=np.float32)
        for i, req in enumerate(requests):
            batch[i] = self._vector(i, req)
        return {self.input_name: batch}

    def _vector(self, i: int, req: Any) -> np.ndarray:
        if isinstance(req, str | bytes) or not isinstance(req, Sequence | np.ndarray):
            raise InvalidRequest(i, f"expected a list of {self.features} numbers, got {type(req).__name__}")
        if len(req) != self.features:
            raise InvalidRequest(i, f"expected {self.features} features, got {len(req)}")
        try:
            vec = np.asarray(req, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidRequest(i, f"features must all be numbers, got {req!r:.60}") from None
        if not np.isfinite(vec).all():
            raise InvalidRequest(i, "features must be finite (no NaN or inf)")
        return vec

    def decode(self, outputs: Mapping[str, np.ndarray]) -> list[Prediction]:
        logits = outputs[self.output_name]
        if logits.shape[1] != len(self.labels):
            raise ValueError(f"model gives {logits.shape[1]} classes but the codec has {len(self.labels)} labels")
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        return [Prediction(self.labels[k], float(probs[i, k])) for i, k in enumerate(best)]
