"""The registry of kernel backends: which exist (one module each in `backends/`), what each takes, whether it
can run here.

A backend is a way of running an op: plain NumPy in float64 (`reference`),
Numba on the CPU, PyTorch, Numba's CUDA target, CuPy, Triton. Whether one can
run is asked once, lazily and without raising: a missing GPU or package is a
reason string, never an import error at `import common.kernels`.

GPU-only code is still exercised without a GPU: `numba-cuda` runs on Numba's
CUDA simulator when `NUMBA_ENABLE_CUDASIM=1` and `triton` on Triton's
interpreter when `TRITON_INTERPRET=1` (both must be set before the package is
first imported). Those count as runnable but slow, so `auto` never picks them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from common.device import cuda_available, cupy_available

Native = Literal["numpy", "torch", "cupy"]


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # the module that holds one function per op, named as the op
    native: Native  # the array type its functions take and return
    dtypes: tuple[str, ...]  # element types its functions accept (and return)
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "reference",
            "common.kernels.reference",
            "numpy",
            ("float16", "float32", "float64"),
            "NumPy, float64 inside: the answer every other backend is held to",
        ),
        Backend(
            "numba",
            "common.kernels.backends.numba_cpu",
            "numpy",
            ("float32", "float64"),
            "Numba @njit(parallel=True) on the CPU",
        ),
        Backend(
            "torch",
            "common.kernels.backends.torch_ops",
            "torch",
            ("float16", "bfloat16", "float32", "float64"),
            "PyTorch ops (ATen kernels) on the tensor's device",
        ),
        Backend(
            "numba-cuda",
            "common.kernels.backends.numba_cuda",
            "numpy",
            ("float32",),
            "Numba CUDA kernels (on the simulator without a GPU)",
        ),
        Backend(
            "cupy",
            "common.kernels.backends.cupy_ops",
            "cupy",
            ("float32",),
            "CUDA C sources (backends/cuda/*.cu) launched through CuPy RawModule",
        ),
        Backend(
            "triton",
            "common.kernels.backends.triton_ops",
            "torch",
            ("float32",),
            "Triton kernels (on the interpreter without a GPU)",
        ),
    )
}


def _simulated_cuda() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _interpreted_triton() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def status(name: str) -> str | None:
    """None if backend `name` can run on this machine, else the reason it cannot."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}: expected one of {list(BACKENDS)}")
    if name == "reference":
        return None
    if name == "numba":
        return None if importlib.util.find_spec("numba") else "needs the numba package"
    if name == "torch":
        return None if importlib.util.find_spec("torch") else "needs the torch package"
    if name == "numba-cuda":
        if not importlib.util.find_spec("numba"):
            return "needs the numba package"
        if cuda_available() or _simulated_cuda():
            from numba import cuda

            if cuda.is_available():
                return None
        return "needs an NVIDIA GPU with a CUDA driver, or NUMBA_ENABLE_CUDASIM=1 (set before numba is imported)"
    if name == "cupy":
        return None if cupy_available() else "needs an NVIDIA GPU and the CuPy package built for its CUDA version"
    if name == "triton":
        if not importlib.util.find_spec("triton"):
            return "needs the triton package"
        if cuda_available() or _interpreted_triton():
            return None
        return "needs an NVIDIA GPU, or TRITON_INTERPRET=1 (set before triton is imported) to run on the CPU"
    raise AssertionError(name)


def is_slow_emulation(name: str) -> bool:
    """True when `name` runs only on a simulator or interpreter here: correct, but not for speed."""
    return name in ("numba-cuda", "triton") and not cuda_available()


@functools.cache
def module(name: str) -> ModuleType:
    """The backend's module, imported on first use."""
    return importlib.import_module(BACKENDS[name].module)
