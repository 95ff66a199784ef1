"""Theoretical occupancy: how many warps of a kernel an SM can hold at once, and what stops it holding more.

A GPU hides memory latency by switching between resident warps, so the
fraction of its warp slots a kernel can fill (occupancy) is a first check on a
kernel's launch configuration. Four resources cap the blocks an SM holds:
warp slots, registers, shared memory and a fixed number of block slots; the
smallest cap wins and names the limiter.

The arithmetic follows NVIDIA's `cuda_occupancy.h` (the header behind the
CUDA Occupancy Calculator and `cudaOccupancyMaxActiveBlocksPerMultiprocessor`),
with the largest shared-memory carveout; tests/kernels/test_occupancy.py checks it
against that header compiled with g++ when the CUDA toolkit is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.kernels.analysis.cuda_build import KernelResources

WARP_SIZE = 32
UNLIMITED = 2**31 - 1  # a resource the kernel does not use does not limit it (cuda_occupancy.h's INT_MAX)
LIMITERS = ("warps", "registers", "shared memory", "blocks")  # tie order, as cuda_occupancy.h lists them


@dataclass(frozen=True)
class GPU:
    """Per-SM limits of one GPU model (CUDA Programming Guide, compute capability table)."""

    name: str
    arch: str
    sms: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int = 65536
    max_registers_per_block: int = 65536
    max_registers_per_thread: int = 255
    register_unit: int = 256  # registers are given to a warp in multiples of this
    sub_partitions: int = 4  # an SM is four quadrants, each with its own quarter of the register file
    shared_per_sm: int = 0  # the largest carveout of the unified L1/shared memory
    shared_per_block: int = 0  # the most one block may opt in to (static + dynamic)
    shared_unit: int = 128  # shared memory is given to a block in multiples of this
    reserved_shared_per_block: int = 0  # the driver's own shared memory per block (1 KiB from sm_80 on)
    max_threads_per_block: int = 1024

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // WARP_SIZE


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("T4", "sm_75", 40, 1024, 16, shared_per_sm=64 * 1024, shared_per_block=64 * 1024, shared_unit=256),
        GPU(
            "A100",
            "sm_80",
            108,
            2048,
            32,
            shared_per_sm=164 * 1024,
            shared_per_block=163 * 1024,
            reserved_shared_per_block=1024,
        ),
        GPU(
            "H100",
            "sm_90",
            132,
            2048,
            32,
            shared_per_sm=228 * 1024,
            shared_per_block=227 * 1024,
            reserved_shared_per_block=1024,
        ),
    )
}


@dataclass(frozen=True)
class Occupancy:
    gpu: str
    threads_per_block: int
    registers_per_thread: int
    shared_bytes_per_block: int
    block_limits: dict[str, int]  # resident blocks per SM each resource alone would allow
    active_blocks: int  # per SM: the smallest of block_limits
    active_warps: int  # per SM
    occupancy: float  # active_warps / max warps per SM
    limiters: tuple[str, ...]  # every resource whose limit equals active_blocks

    @property
    def limiter(self) -> str:
        """The resource that caps occupancy (the first in LIMITERS order on a tie)."""
        return self.limiters[0]


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def _gpu(gpu: str | GPU) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}: expected one of {list(GPUS)} or a GPU(...)")
    return GPUS[gpu]


def occupancy(gpu: str | GPU, threads_per_block: int, registers_per_thread: int, shared_bytes: int = 0) -> Occupancy:
    """Theoretical occupancy of a kernel launched with `threads_per_block` on one SM of `gpu`.

    `shared_bytes` is the block's shared memory, static plus dynamic. Raises
    ValueError for a launch the GPU would refuse (too many threads, registers
    or shared memory for one block), naming the resource.
    """
    g = _gpu(gpu)
    if not 1 <= threads_per_block <= g.max_threads_per_block:
        raise ValueError(
            f"threads_per_block must be 1 to {g.max_threads_per_block} on {g.name}, got {threads_per_block}"
        )
    if not 0 <= registers_per_thread <= g.max_registers_per_thread:
        raise ValueError(f"registers_per_thread must be 0 to {g.max_registers_per_thread}, got {registers_per_thread}")
    if shared_bytes < 0:
        raise ValueError(f"shared_bytes must be >= 0, got {shared_bytes}")

    warps_per_block = -(-threads_per_block // WARP_SIZE)
    limits = {"warps": g.max_warps_per_sm // warps_per_block, "blocks": g.max_blocks_per_sm}

    # Registers go to warps in units of 256, inside each of the SM's four quadrants.
    regs_per_warp = _round_up(registers_per_thread * WARP_SIZE, g.register_unit)
    if regs_per_warp * _round_up(warps_per_block, g.sub_partitions) > g.max_registers_per_block:
        raise ValueError(
            f"a block of {threads_per_block} threads at {registers_per_thread} registers each needs more than "
            f"the {g.max_registers_per_block} registers one block may use on {g.name}: launch would fail"
        )
    if regs_per_warp:
        warps_per_quadrant = (g.registers_per_sm // g.sub_partitions) // regs_per_warp
        limits["registers"] = warps_per_quadrant * g.sub_partitions // warps_per_block
    else:
        limits["registers"] = UNLIMITED

    # Shared memory goes to blocks in units, each block also carrying the driver's reserved share.
    shared_per_block = _round_up(shared_bytes + g.reserved_shared_per_block, g.shared_unit)
    if shared_per_block > g.shared_per_block + g.reserved_shared_per_block:
        raise ValueError(
            f"{shared_bytes} bytes of shared memory per block is more than the {g.shared_per_block} one block may "
            f"use on {g.name}: launch would fail"
        )
    limits["shared memory"] = g.shared_per_sm // shared_per_block if shared_per_block else UNLIMITED

    active = min(limits.values())
    warps = active * warps_per_block
    return Occupancy(
        gpu=g.name,
        threads_per_block=threads_per_block,
        registers_per_thread=registers_per_thread,
        shared_bytes_per_block=shared_bytes,
        block_limits={k: limits[k] for k in LIMITERS},
        active_blocks=active,
        active_warps=warps,
        occupancy=warps / g.max_warps_per_sm,
        limiters=tuple(k for k in LIMITERS if limits[k] == active),
    )


def kernel_occupancy(
    kernel: KernelResources, threads_per_block: int, gpu: str | GPU, dynamic_shared_bytes: int = 0
) -> Occupancy:
    """Occupancy of a compiled kernel (registers and static shared memory from ptxas) at a launch block size.

    Compile for the GPU's own architecture: register counts differ between them.
    """
    g = _gpu(gpu)
    if kernel.arch != g.arch:
        raise ValueError(f"{kernel.kernel} was compiled for {kernel.arch}, but {g.name} is {g.arch}: compile for it")
    return occupancy(g, threads_per_block, kernel.registers, kernel.shared_bytes + dynamic_shared_bytes)
