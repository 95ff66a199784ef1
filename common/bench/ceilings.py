"""The machine's two ceilings, memory bandwidth and matmul FLOP/s, measured here, and the roofline they make."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from common.bench.timing import Timing, measure
from common.device import Device, get_device, thread_count


@dataclass(frozen=True)
class Ceilings:
    """Peak memory bandwidth and peak fp32 matmul rate, measured here.

    Later modules quote results as fractions of these. `ridge` is the arithmetic
    intensity (FLOP per byte moved) above which a kernel is compute-bound.
    """

    bandwidth_gbs: float
    matmul_gflops: float
    device: str
    threads: int
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ridge(self) -> float:
        return self.matmul_gflops / self.bandwidth_gbs

    def attainable_gflops(self, intensity: float) -> float:
        """The roofline: what a kernel of this FLOP/byte can reach at best."""
        return min(self.matmul_gflops, self.bandwidth_gbs * intensity)


def measure_bandwidth(nbytes: int = 256 * 2**20, device: Device | None = None, repeat: int = 10) -> Timing:
    """Time a large copy. Each copy reads and writes `nbytes`, so bandwidth is
    2 * nbytes / time. Both buffers are touched first: a first touch of fresh
    memory pays for page faults, not bandwidth."""
    device = device or get_device()
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device.torch)
    dst = torch.zeros_like(src)
    return measure(
        lambda: dst.copy_(src), name=f"copy {nbytes / 2**20:.0f} MiB", warmup=2, repeat=repeat, number=1, device=device
    )


def measure_matmul(
    n: int = 2048, dtype: torch.dtype = torch.float32, device: Device | None = None, repeat: int = 10
) -> Timing:
    """Time an n x n matmul, which does 2 * n**3 floating-point operations."""
    device = device or get_device()
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device.torch, dtype)
    b = torch.randn(n, n, generator=gen).to(device.torch, dtype)
    out = torch.empty(n, n, dtype=dtype, device=device.torch)
    return measure(
        lambda: torch.mm(a, b, out=out),
        name=f"matmul {n}x{n} {dtype}",
        warmup=2,
        repeat=repeat,
        number=1,
        device=device,
    )


def bandwidth_gbs(timing: Timing, nbytes: int, best: bool = False) -> float:
    """Copy bandwidth (read + write) in GB/s from the median copy time (the fastest with `best`)."""
    return 2 * nbytes / (timing.min if best else timing.median) / 1e9


def matmul_gflops(timing: Timing, n: int, best: bool = False) -> float:
    return 2 * n**3 / (timing.min if best else timing.median) / 1e9


def machine_ceilings(device: str = "auto") -> Ceilings:
    """Measure both ceilings once per process and device; later calls return the cached result.

    A ceiling is a best case, and outside load only ever slows a sample down, so
    it comes from the fastest sample rather than the median.
    """
    return _ceilings(str(get_device(device)))  # cache on the resolved device: "auto" and "cpu" are one entry


@functools.cache
def _ceilings(device: str) -> Ceilings:
    dev = get_device(device)
    nbytes, n = 256 * 2**20, 2048
    copy = measure_bandwidth(nbytes, dev)
    mm = measure_matmul(n, device=dev)
    return Ceilings(
        bandwidth_gbs=bandwidth_gbs(copy, nbytes, best=True),
        matmul_gflops=matmul_gflops(mm, n, best=True),
        device=str(dev),
        threads=thread_count(),
        details={"copy": copy.row(), "matmul": mm.row()},
    )


def ceilings_row(c: Ceilings) -> dict[str, Any]:
    row = asdict(c)
    row["ridge_flop_per_byte"] = c.ridge
    return row
