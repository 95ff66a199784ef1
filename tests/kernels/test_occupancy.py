"""Theoretical occupancy: standard cases worked by hand, and NVIDIA's own calculator header as the oracle."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from common.kernels.analysis.cuda_build import KernelResources
from common.kernels.analysis.occupancy import GPUS, LIMITERS, kernel_occupancy, occupancy


@pytest.mark.parametrize(
    ("gpu", "threads", "regs", "smem", "blocks", "fraction", "limiter"),
    [
        # A100: 64 warps, 32 blocks, 64K registers (16K per quadrant), 164 KiB shared, 1 KiB reserved per block.
        ("A100", 256, 32, 0, 8, 1.0, "warps"),  # 32 regs x 32 threads = 1024 per warp: 64 warps fit exactly
        ("A100", 256, 64, 0, 4, 0.5, "registers"),  # 2048 per warp: 8 warps a quadrant, 32 warps
        ("A100", 256, 128, 0, 2, 0.25, "registers"),
        ("A100", 256, 255, 0, 1, 0.125, "registers"),  # 255 x 32 rounds up to 8192: 2 warps a quadrant
        ("A100", 128, 40, 0, 12, 0.75, "registers"),  # 1280 per warp: 12 warps a quadrant
        ("A100", 256, 33, 0, 6, 0.75, "registers"),  # 33 x 32 = 1056 rounds up to 1280, as 40 does
        ("A100", 256, 32, 48 * 1024, 3, 0.375, "shared memory"),  # (48 + 1) KiB a block: 3 fit in 164 KiB
        ("A100", 1024, 32, 100 * 1024, 1, 0.5, "shared memory"),  # 101 KiB a block: one fits
        ("A100", 32, 16, 0, 32, 0.5, "blocks"),  # one-warp blocks: the 32 block slots run out first
        ("A100", 96, 32, 0, 21, 63 / 64, "warps"),  # 3 warps a block: 64 // 3 = 21 blocks, one warp slot idle
        # T4: 32 warps (1024 threads), 16 blocks, 64 KiB shared in 256-byte units, no reserve.
        ("T4", 256, 32, 0, 4, 1.0, "warps"),
        ("T4", 32, 32, 0, 16, 0.5, "blocks"),
        ("T4", 256, 32, 32 * 1024, 2, 0.5, "shared memory"),
        ("T4", 128, 128, 0, 4, 0.5, "registers"),  # 4096 per warp: 4 warps a quadrant, 16 warps
        ("T4", 256, 33, 100, 4, 1.0, "warps"),  # registers would allow 6 blocks; 8-warp blocks fill 32 slots first
        # H100: like A100 with 228 KiB shared.
        ("H100", 256, 32, 0, 8, 1.0, "warps"),
        ("H100", 256, 32, 48 * 1024, 4, 0.5, "shared memory"),
    ],
)
def test_standard_cases(gpu, threads, regs, smem, blocks, fraction, limiter):
    occ = occupancy(gpu, threads, regs, smem)
    assert occ.active_blocks == blocks
    assert occ.occupancy == pytest.approx(fraction)
    assert occ.limiter == limiter
    assert occ.active_warps == blocks * -(-threads // 32)


def test_ties_name_every_limiting_resource():
    occ = occupancy("A100", 256, 32)
    assert occ.limiters == ("warps", "registers")  # both allow exactly 8 blocks
    assert occ.block_limits["warps"] == occ.block_limits["registers"] == 8


def test_bad_launches_are_errors_naming_the_resource():
    with pytest.raises(ValueError, match="threads_per_block"):
        occupancy("A100", 2048, 32)
    with pytest.raises(ValueError, match="registers"):
        occupancy("A100", 1024, 65)  # 65 x 32 rounds to 2304 a warp, x 32 warps > 65536 a block
    with pytest.raises(ValueError, match="shared memory"):
        occupancy("T4", 128, 32, 65 * 1024)
    with pytest.raises(ValueError, match="unknown GPU"):
        occupancy("V100", 128, 32)


def test_kernel_occupancy_reads_registers_and_shared_memory_from_ptxas():
    kernel = KernelResources("k", "sm_80", 64, 8 * 1024, 0, 0, 0, 0, 1)
    occ = kernel_occupancy(kernel, 256, "A100")
    assert (occ.active_blocks, occ.limiter) == (4, "registers")
    assert kernel_occupancy(kernel, 256, "A100", dynamic_shared_bytes=40 * 1024).limiter == "shared memory"
    with pytest.raises(ValueError, match="compiled for sm_80"):
        kernel_occupancy(kernel, 256, "T4")


# --- NVIDIA's calculator as the oracle -----------------------------------------------------------------


def _occupancy_header() -> Path | None:
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    triton = importlib.util.find_spec("triton")
    if triton and triton.origin:
        roots.append(str(Path(triton.origin).parent / "backends" / "nvidia"))
    found = [Path(r) / "include" / "cuda_occupancy.h" for r in roots if r]
    return next((p for p in found if p.is_file()), None)


_ORACLE = r"""
#include <cstdio>
#include "cuda_occupancy.h"
int main() {
    int major, minor, threads, regs, smem;
    while (scanf("%d %d %d %d %d", &major, &minor, &threads, &regs, &smem) == 5) {
        cudaOccDeviceProp p;
        p.computeMajor = major; p.computeMinor = minor;
        p.maxThreadsPerBlock = 1024; p.warpSize = 32; p.numSms = 1;
        p.regsPerBlock = 65536; p.regsPerMultiprocessor = 65536; p.sharedMemPerBlock = 48 * 1024;
        if (major == 7) {  // T4
            p.maxThreadsPerMultiprocessor = 1024; p.sharedMemPerMultiprocessor = 64 * 1024;
            p.sharedMemPerBlockOptin = 64 * 1024; p.reservedSharedMemPerBlock = 0;
        } else {  // A100 (164 KiB) and H100 (228 KiB)
            p.maxThreadsPerMultiprocessor = 2048;
            p.sharedMemPerMultiprocessor = (major == 8 ? 164 : 228) * 1024;
            p.sharedMemPerBlockOptin = (major == 8 ? 163 : 227) * 1024; p.reservedSharedMemPerBlock = 1024;
        }
        cudaOccFuncAttributes a;
        a.maxThreadsPerBlock = 1024; a.numRegs = regs; a.sharedSizeBytes = 0;
        a.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN; a.maxDynamicSharedSizeBytes = smem;
        cudaOccDeviceState s;
        cudaOccResult r;
        int err = cudaOccMaxActiveBlocksPerMultiprocessor(&r, &p, &a, &s, threads, smem);
        printf("%d %d %u\n", err, r.activeBlocksPerMultiprocessor, r.limitingFactors);
    }
}
"""


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Path:
    header = _occupancy_header()
    if header is None or shutil.which("g++") is None:
        pytest.skip("needs g++ and cuda_occupancy.h (CUDA toolkit, or Triton's copy of it)")
    work = tmp_path_factory.mktemp("occ")
    (work / "oracle.cpp").write_text(_ORACLE)
    subprocess.run(["g++", "-O1", f"-I{header.parent}", "oracle.cpp", "-o", "oracle"], cwd=work, check=True)
    return work / "oracle"


def test_matches_cuda_occupancy_header(oracle):
    """Every block size, register count and shared memory size on a grid, on all three GPUs."""
    bits = {1: "warps", 2: "registers", 4: "shared memory", 8: "blocks"}
    cases = []
    for (name, gpu), threads, regs, smem in itertools.product(
        GPUS.items(),
        (32, 64, 96, 128, 192, 256, 384, 512, 640, 1024),
        (0, 16, 24, 32, 33, 40, 48, 64, 72, 96, 128, 168, 255),
        (0, 1, 1000, 4096, 12 * 1024, 33 * 1024, 48 * 1024, 60 * 1024, 100 * 1024),
    ):
        major, minor = int(gpu.arch[3]), int(gpu.arch[4])
        cases.append((name, threads, regs, smem, f"{major} {minor} {threads} {regs} {smem}"))
    done = subprocess.run([str(oracle)], input="\n".join(c[-1] for c in cases), capture_output=True, text=True)
    answers = done.stdout.split("\n")
    checked, seen = 0, set()
    for (name, threads, regs, smem, _), line in zip(cases, answers, strict=False):
        err, blocks, factors = (int(v) for v in line.split())
        try:
            occ = occupancy(name, threads, regs, smem)
        except ValueError:
            assert blocks == 0, (name, threads, regs, smem)  # the header says it cannot launch either
            continue
        assert err == 0 and occ.active_blocks == blocks, (name, threads, regs, smem, blocks, occ)
        assert set(occ.limiters) == {bits[b] for b in bits if factors & b}, (name, threads, regs, smem, factors)
        checked += 1
        seen.update(occ.limiters)
    assert checked > 2000 and seen == set(LIMITERS)  # the grid exercises every limiter
