"""PyTorch runtimes: eager, and compiled with torch.compile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import numpy as np
import torch

from common.device import get_device
from common.engine.model import Model
from common.engine.precision import apply_precision


class TorchRuntime:
    """Runs a `Model` with PyTorch, eagerly or through `torch.compile`.

    Inputs arrive as NumPy and are wrapped with `torch.from_numpy` (no copy on
    the CPU); outputs go back as NumPy. Inference runs under `inference_mode`,
    which skips autograd bookkeeping entirely.
    """

    def __init__(
        self,
        model: Model,
        *,
        device: str = "auto",
        precision: str = "fp32",
        compile: bool = False,
        compile_mode: str | None = None,
    ):
        self.model = model
        self._device = get_device(device)
        self.device = str(self._device)
        self.precision = precision
        self.compiled = compile
        self.name = "torch-compile" if compile else "torch-eager"
        module = apply_precision(model.build(), precision, self._device)
        self._float_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        if compile:  # torch.compile of a Module returns an OptimizedModule (a Module); its stub says only Callable
            module = cast(torch.nn.Module, torch.compile(module, mode=compile_mode, dynamic=True))
        self._module: torch.nn.Module | None = module

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._module is None:
            raise RuntimeError(f"runtime {self.name!r} for {self.model.name!r} is closed")
        self.model.check_inputs(inputs)
        args = [self._to_device(inputs[s.name]) for s in self.model.inputs]
        with torch.inference_mode():
            out = self._module(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        if len(outs) != len(self.model.outputs):
            raise RuntimeError(
                f"model {self.model.name!r} returned {len(outs)} outputs, its spec names {len(self.model.outputs)}"
            )
        # outputs leave in float32 whatever the compute precision (NumPy has no bfloat16)
        return {
            s.name: (t.float() if t.is_floating_point() else t).detach().cpu().numpy()
            for s, t in zip(self.model.outputs, outs, strict=True)
        }

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array).to(self._device.torch)
        # float inputs follow the weights' precision (int8 dynamic keeps fp32 activations)
        return t.to(self._float_dtype) if t.is_floating_point() else t

    def close(self) -> None:
        self._module = None

    def __repr__(self) -> str:
        state = "closed" if self._module is None else "open"
        return (
            f"TorchRuntime({self.model.name!r}, device={self.device!r}, precision={self.precision!r}, "
            f"compile={self.compiled}, {state})"
        )
