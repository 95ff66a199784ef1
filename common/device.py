"""What hardware is here: the only module that asks "is there a GPU?".

Every check is cheap and never raises, so a notebook or test can call it on a
laptop with no CUDA driver, no CuPy and no GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import psutil
import torch

DeviceKind = Literal["cpu", "cuda"]
_KINDS = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """True when torch can run on a CUDA GPU; False on any error."""
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver must read as "no GPU", not crash a notebook
        return False


def cupy_available() -> bool:
    """True when CuPy is installed *and* can reach a GPU (importing alone is not enough)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:
        return False


@dataclass(frozen=True)
class Device:
    """Where tensors live: a kind and an index, convertible to torch's device."""

    kind: DeviceKind = "cpu"
    index: int = 0

    @property
    def torch(self) -> torch.device:
        return torch.device("cpu") if self.kind == "cpu" else torch.device("cuda", self.index)

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def synchronize(self) -> None:
        """Wait for queued GPU work, so a timer measures the work and not its launch."""
        if self.is_gpu:
            torch.cuda.synchronize(self.index)

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def get_device(prefer: str = "auto") -> Device:
    """The device strategy: 'auto' takes the GPU when there is one, else the CPU.

    Asking for 'cuda' (or 'cuda:N') where there is none is an error rather than a
    silent fallback, so a benchmark never reports CPU numbers under a GPU label.
    """
    name, _, index = prefer.partition(":")
    if name not in _KINDS or (index and not index.isdigit()):
        raise ValueError(f"unknown device {prefer!r}: expected one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if name == "cpu":
        return Device("cpu")
    if name == "auto":
        return Device("cuda", 0) if cuda_available() else Device("cpu")
    if not cuda_available():
        raise RuntimeError(f"device {prefer!r} requested but no CUDA GPU is available here")
    n = int(index or 0)
    count = torch.cuda.device_count()
    if n >= count:
        raise ValueError(f"device {prefer!r} does not exist: this machine has {count} CUDA device(s)")
    return Device("cuda", n)


def array_module(device: Device | None = None) -> ModuleType:
    """NumPy on the CPU, CuPy on a GPU (when CuPy can use it): code written
    against `xp` runs on either."""
    device = device or get_device()
    if device.is_gpu and cupy_available():
        import cupy

        return cupy
    return np


def thread_count() -> int:
    """Threads torch uses for intra-op parallelism (what a CPU matmul spreads over)."""
    return torch.get_num_threads()


def set_thread_count(n: int) -> None:
    """Pin torch's intra-op threads; raises on a count this machine cannot honour."""
    cores = os.cpu_count() or 1
    if not 1 <= n <= 4 * cores:
        raise ValueError(f"thread count must be between 1 and {4 * cores} on this {cores}-core machine, got {n}")
    torch.set_num_threads(n)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run a block on `n` torch threads (and `n` Numba threads, if Numba is loaded), then restore both.

    Timing on one thread is what survives a shared machine: a parallel op waits at each of its barriers for
    its slowest thread, and when another process holds a core that thread waits a scheduler tick (ms) for a
    turn: in one busy run a batch-8 decode step on 2 threads took 19x a batch-1 step (3x on one thread). One
    thread has a core to itself on any machine with two.
    """
    before = thread_count()
    numba = sys.modules.get("numba")
    numba_before = numba.get_num_threads() if numba is not None else None
    set_thread_count(n)
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if numba is not None and numba_before is not None:
            numba.set_num_threads(numba_before)


@dataclass(frozen=True)
class DtypePolicy:
    """Which float type compute should use on a device, and why.

    On a CPU without bf16/fp16 instructions reduced precision is emulated and
    far *slower* than fp32; with them it can be faster. The CPU default stays
    fp32, the one type fast everywhere; module 05 measures the others.
    """

    compute: torch.dtype
    reason: str


# CPU feature flags (as py-cpuinfo names them) that give a 16-bit type native
# multiply-adds; without them torch converts to fp32 and back, and is far slower.
LOW_PRECISION_FLAGS = {
    "bfloat16": frozenset({"avx512_bf16", "amx_bf16", "bf16"}),  # x86 AVX-512/AMX, Arm BF16
    "float16": frozenset({"avx512_fp16", "amx_fp16", "asimdhp"}),  # x86 AVX-512/AMX, Arm half-precision SIMD
}


@functools.cache
def _cpu_info() -> dict[str, Any]:
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info()
    except Exception:  # an unknown CPU must not break a notebook
        return {}


def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC 7B13'."""
    return _cpu_info().get("brand_raw") or platform.processor() or "unknown"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (e.g. 'avx2', 'avx512_bf16'); read once per process."""
    return frozenset(_cpu_info().get("flags", ()))


def native_low_precision() -> dict[str, bool]:
    """Whether this CPU has instructions for bf16 and fp16 arithmetic."""
    flags = cpu_flags()
    return {dtype: bool(flags & names) for dtype, names in LOW_PRECISION_FLAGS.items()}


@dataclass(frozen=True)
class Bf16Route:
    """Which kernel a bf16 matrix multiply takes on this CPU, and what that costs against fp32.

    PyTorch sends a bf16 matmul to oneDNN when oneDNN supports bf16 here: with the bf16 instructions
    (`avx512_bf16`, AMX, Arm BF16) it multiplies in bf16 natively; with AVX-512 BW/VL/DQ (or AVX-NE-CONVERT
    on the newest Intel client chips) but no bf16 arithmetic it converts to fp32 inside its vectorised
    kernel, a little slower than fp32. Otherwise (AVX2-only parts such as AMD Zen 2) torch falls back to a
    generic kernel that converts element by element, tens to a hundred times slower than fp32. The route
    is read from oneDNN's own answer (ATen: `mkldnn_bf16_device_check`), not guessed from the flags.
    """

    route: str  # "native", "onednn-emulated" or "fallback"
    reason: str

    @property
    def slow(self) -> bool:
        """True where bf16 matmul is many times slower than fp32 (the generic fallback)."""
        return self.route == "fallback"


def bf16_matmul_route() -> Bf16Route:
    """How this CPU runs a bf16 matmul: native bf16, emulated inside oneDNN, or torch's slow fallback."""
    if native_low_precision()["bfloat16"]:
        return Bf16Route("native", "this CPU has bf16 instructions: oneDNN multiplies bf16 in hardware")
    onednn = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if onednn:
        return Bf16Route(
            "onednn-emulated",
            "no bf16 arithmetic, but oneDNN supports bf16 here (AVX-512 or AVX-NE-CONVERT): it widens bf16 to fp32"
            " inside its kernel, a little slower than fp32",
        )
    return Bf16Route(
        "fallback",
        "no bf16 instructions and no oneDNN bf16 support (no AVX-512): torch's generic kernel converts each"
        " element, many times slower than fp32",
    )


def dtype_policy(device: Device | None = None) -> DtypePolicy:
    device = device or get_device()
    if device.is_gpu:
        if torch.cuda.is_bf16_supported():
            return DtypePolicy(torch.bfloat16, "GPU with bf16 support: half the bytes, fp32 range")
        return DtypePolicy(torch.float16, "GPU without bf16: fp16 halves memory traffic")
    if native_low_precision()["bfloat16"]:
        why = "this CPU has bf16 instructions, so bf16 is an option worth measuring (module 05)"
    else:
        why = bf16_matmul_route().reason
    return DtypePolicy(torch.float32, f"CPU: fp32 is fast on every CPU; {why}")


def describe() -> dict[str, Any]:
    """A one-screen summary of this machine for the top of a notebook."""
    device = get_device()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores (logical)": os.cpu_count(),
        "cores (physical)": psutil.cpu_count(logical=False),
        "memory (GiB)": round(psutil.virtual_memory().total / 2**30, 1),
        "torch threads": thread_count(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device.index) if device.is_gpu else "none",
        "array module": array_module(device).__name__,
        "compute dtype": str(dtype_policy(device).compute).removeprefix("torch."),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    return info
