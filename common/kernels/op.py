"""`Op`: one operation, many backends, one calling convention.

An op is called with NumPy arrays or torch tensors (CuPy arrays too, on a GPU)
and `backend=` a name or "auto". It checks the arguments once, for every
backend alike, converts them to what the chosen backend takes (zero-copy on
the CPU: `torch.from_numpy` and `Tensor.numpy` share memory), runs it, and
hands the result back as the caller's array type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common.kernels import registry

ArrayLike = Any  # numpy.ndarray | torch.Tensor | cupy.ndarray


def array_kind(x: object) -> str:
    """'numpy', 'torch' or 'cupy', by the array's own type (no import of torch or cupy needed)."""
    if isinstance(x, np.ndarray):
        return "numpy"
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    raise TypeError(f"expected a numpy.ndarray, torch.Tensor or cupy.ndarray, got {type(x).__name__}")


def dtype_name(x: ArrayLike) -> str:
    """'float32' for np.float32 and torch.float32 alike."""
    return str(x.dtype).removeprefix("torch.")


def _is_gpu(x: ArrayLike) -> bool:
    kind = array_kind(x)
    return kind == "cupy" or (kind == "torch" and x.device.type == "cuda")


def _convert(x: ArrayLike, to: str) -> ArrayLike:
    kind = array_kind(x)
    if kind == to:
        return x
    if to == "numpy":
        if kind == "torch":
            if x.dtype.is_floating_point and x.dtype not in _numpy_floats():
                raise TypeError(f"{dtype_name(x)} has no NumPy type: choose backend='torch' for it")
            return x.detach().cpu().numpy()
        return x.get()  # cupy
    if to == "torch":
        import torch

        if kind == "numpy":
            return torch.from_numpy(np.ascontiguousarray(x))
        return torch.as_tensor(x, device="cuda")  # cupy: DLPack, stays on the GPU
    import cupy

    return cupy.asarray(x)


def _numpy_floats() -> tuple[Any, ...]:  # built on first use, so torch loads only when needed
    import torch

    return (torch.float16, torch.float32, torch.float64)


def _back(result: ArrayLike, like: ArrayLike) -> ArrayLike:
    """`result` as the same array type (and torch device) as the caller's first argument."""
    kind = array_kind(like)
    if array_kind(result) == kind and (kind != "torch" or result.device == like.device):
        return result
    if kind == "torch":
        import torch

        return torch.as_tensor(
            _convert(result, "numpy") if array_kind(result) == "cupy" else result, device=like.device
        )
    return _convert(result, kind)


class Op:
    """A named operation: `op(*arrays, backend="auto", **options)`.

    `check(*arrays, **options)` raises ValueError for bad input, naming what is
    wrong and what is expected, before any backend runs. `cpu_order` and
    `gpu_order` rank the backends for `auto`, fastest first, as measured by
    `benchmarks/kernels.py`. `flops_per_element` is set for an op that does a
    fixed few FLOPs per element of its first input (elementwise and row-wise
    ops: memory-bound at every size), None where the work grows with a
    reduced axis (matmul, attention).
    """

    def __init__(
        self,
        name: str,
        check: Callable[..., None],
        implemented: Sequence[str],
        cpu_order: Sequence[str],
        gpu_order: Sequence[str],
        doc: str,
        flops_per_element: int | None = None,
    ):
        unknown = set(implemented) - set(registry.BACKENDS)
        if unknown:
            raise ValueError(f"{name}: unknown backends {sorted(unknown)}")
        self.name = name
        self._check = check
        self.implemented = tuple(implemented)
        self.cpu_order = tuple(b for b in cpu_order if b in self.implemented)
        self.gpu_order = tuple(b for b in gpu_order if b in self.implemented)
        self.flops_per_element = flops_per_element
        self.__doc__ = doc

    def __repr__(self) -> str:
        return f"<kernel op {self.name}: {', '.join(self.implemented)}>"

    def backends(self) -> list[str]:
        """The backends of this op that can run on this machine."""
        return [b for b in self.implemented if registry.status(b) is None]

    def unavailable(self) -> dict[str, str]:
        """Each backend of this op that cannot run here, with the reason."""
        reasons = {b: registry.status(b) for b in self.implemented}
        return {b: r for b, r in reasons.items() if r is not None}

    def implementation(self, backend: str) -> Callable[..., Any]:
        """The backend's own function, taking and returning its native arrays (for benchmarks)."""
        self._require(backend)
        return getattr(registry.module(backend), self.name)

    def choose(self, *arrays: ArrayLike) -> str:
        """The backend `auto` runs for these arrays: the first runnable, real-hardware one that takes them."""
        dtype = dtype_name(arrays[0])
        order = self.gpu_order if _is_gpu(arrays[0]) else self.cpu_order
        for b in order:
            spec = registry.BACKENDS[b]
            if registry.status(b) is None and not registry.is_slow_emulation(b) and dtype in spec.dtypes:
                return b
        raise ValueError(f"{self.name}: no backend here takes {dtype} arrays; runnable: {self.backends()}")

    def _require(self, backend: str) -> None:
        if backend not in registry.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: expected 'auto' or one of {list(self.implemented)}")
        if backend not in self.implemented:
            raise ValueError(f"{self.name} has no {backend!r} backend: expected one of {list(self.implemented)}")
        reason = registry.status(backend)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} cannot run here: it {reason}")

    def __call__(self, *arrays: ArrayLike, backend: str = "auto", **options: Any) -> ArrayLike:
        kinds = [array_kind(a) for a in arrays]  # TypeError for anything else
        dtypes = {dtype_name(a) for a in arrays}
        if len(dtypes) > 1:
            raise ValueError(f"{self.name}: all arrays must share one dtype, got {[dtype_name(a) for a in arrays]}")
        if len(set(kinds)) > 1:
            raise ValueError(f"{self.name}: all arrays must be of one type, got {kinds}")
        self._check(*arrays, **options)
        if backend == "auto":
            backend = self.choose(*arrays)
        self._require(backend)
        spec = registry.BACKENDS[backend]
        dtype = dtypes.pop()
        if dtype not in spec.dtypes:
            raise ValueError(
                f"{self.name}: backend {backend!r} takes {', '.join(spec.dtypes)} arrays, got {dtype}; "
                f"cast first, or choose a backend that takes {dtype}"
            )
        native = [_convert(a, spec.native) for a in arrays]
        result = getattr(registry.module(backend), self.name)(*native, **options)
        return _back(result, arrays[0])
