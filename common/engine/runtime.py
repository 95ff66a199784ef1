"""The `Runtime` protocol and the factory that picks one by name.

The engine talks to this protocol only, never to torch: a runtime is anything
that turns a batch of named NumPy arrays into named NumPy arrays. Runtimes are
registered by import path and imported on first use, so a missing optional
backend (ONNX Runtime, TensorRT) costs nothing until someone asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from common.engine.model import Model


@runtime_checkable
class Runtime(Protocol):
    """Runs one model on one device. `close()` must be idempotent."""

    name: str
    model: Model
    device: str

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RuntimeEntry:
    target: str  # "package.module:ClassName", imported on first use
    description: str
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> type:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, RuntimeEntry] = {}


def register_runtime(name: str, target: str, description: str = "", **options: Any) -> None:
    """Make `create_runtime(name, ...)` build `target(model, device=..., **options)`."""
    if name in _REGISTRY and _REGISTRY[name].target != target:
        raise ValueError(f"runtime {name!r} is already registered to {_REGISTRY[name].target}")
    _REGISTRY[name] = RuntimeEntry(target, description, dict(options))


def runtimes() -> dict[str, str]:
    """Registered runtime names and what each is."""
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def create_runtime(name: str, model: Model, *, device: str = "auto", **options: Any) -> Runtime:
    """The factory: a runtime by name, e.g. `create_runtime("torch-compile", model)`."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}: expected one of {sorted(_REGISTRY)}") from None
    return entry.load()(model, device=device, **{**entry.options, **options})


register_runtime(
    "torch-eager", "common.engine.torch_runtime:TorchRuntime", "PyTorch eager mode: op by op, no compile step"
)
register_runtime(
    "torch-compile",
    "common.engine.torch_runtime:TorchRuntime",
    "torch.compile (Inductor): fuses ops into generated kernels after a one-off compile",
    compile=True,
)
