"""What a model is to the engine: a way to build it and the tensors it takes and gives.

A `Model` is a description, not weights in memory: runtimes decide how and
where to build it (eager torch, compiled, ONNX later), which is what lets one
argument switch runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch stays out of the engine's import graph (dependency inversion)
    import torch


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one input or output; `None` marks a dynamic axis (the batch)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def check(self, array: Any) -> None:
        """Raise a ValueError that names the tensor, what it got and what it expects."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"input {self.name!r}: expected a numpy array, got {type(array).__name__}")
        if array.dtype != np.dtype(self.dtype):
            raise ValueError(f"input {self.name!r}: expected dtype {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape) or any(
            want is not None and got != want for got, want in zip(array.shape, self.shape, strict=True)
        ):
            raise ValueError(f"input {self.name!r}: expected shape {self.shape_str}, got {tuple(array.shape)}")

    @property
    def shape_str(self) -> str:
        return "(" + ", ".join("batch" if d is None else str(d) for d in self.shape) + ")"


@dataclass(frozen=True)
class Model:
    """A named network: a factory that builds the torch module, and its IO contract."""

    name: str
    factory: Callable[[], torch.nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Realistic warm-up inputs where random values would be wrong (token ids, masks): (batch, seed) -> inputs
    examples: Callable[[int, int], dict[str, np.ndarray]] | None = None

    def build(self) -> torch.nn.Module:
        """A fresh module in eval mode (dropout off, batch-norm frozen)."""
        return self.factory().eval()

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Validate a batch against the input specs and return its batch size."""
        want = {s.name for s in self.inputs}
        if set(inputs) != want:
            missing, extra = sorted(want - set(inputs)), sorted(set(inputs) - want)
            raise ValueError(f"model {self.name!r} takes inputs {sorted(want)}: missing {missing}, unexpected {extra}")
        batch = None
        for spec in self.inputs:
            spec.check(inputs[spec.name])
            n = inputs[spec.name].shape[0]
            if batch is not None and n != batch:
                raise ValueError(
                    f"model {self.name!r}: inputs disagree on batch size ({batch} vs {n} for {spec.name!r})"
                )
            batch = n
        if not batch:
            raise ValueError(f"model {self.name!r}: empty batch (batch size 0)")
        return batch

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right shape and dtype: for warm-up, tests and export."""
        if self.examples is not None:
            return self.examples(batch, seed)
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            shape = tuple(batch if d is None else d for d in spec.shape)
            if np.issubdtype(np.dtype(spec.dtype), np.integer):
                out[spec.name] = rng.integers(0, 100, size=shape).astype(spec.dtype)
            else:
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return out
