import os
import platform
import re
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from numba import cuda  # tests/conftest.py has chosen the simulator or the GPU by now

from common import bench, device


def test_describe_names_the_machine():
    info = device.describe()
    for key in ("cpu", "cores (logical)", "memory (GiB)", "device", "gpu", "torch", "compute dtype"):
        assert key in info, key
    assert info["cores (logical)"] == os.cpu_count()
    assert info["torch"] == torch.__version__ and info["device"] == str(device.get_device())
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():  # Linux: the kernel's own count, in KiB
        total_kib = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text()).group(1))
        assert info["memory (GiB)"] == pytest.approx(total_kib / 2**20, abs=0.1)


def test_auto_matches_what_torch_sees():
    d = device.get_device("auto")
    assert d.is_gpu == torch.cuda.is_available()
    assert d.torch.type == d.kind


def test_cpu_is_always_available_and_synchronize_is_a_no_op():
    d = device.get_device("cpu")
    assert str(d) == "cpu" and d.torch == torch.device("cpu")
    d.synchronize()


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu", "", "cpu:0:1"])
def test_unknown_device_names_are_rejected_with_the_choices(bad):
    with pytest.raises(ValueError, match="expected one of"):
        device.get_device(bad)


def test_asking_for_cuda_without_a_gpu_is_an_error_not_a_fallback():
    if device.cuda_available():
        pytest.skip("this machine has a GPU; the no-GPU error path cannot be reached")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        device.get_device("cuda")


def test_checks_never_raise(monkeypatch):
    assert isinstance(device.cuda_available(), bool)
    assert isinstance(device.cupy_available(), bool)

    def broken_driver() -> bool:
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken_driver)
    assert device.cuda_available() is False, "a broken driver reads as no GPU"


def test_array_module_is_numpy_on_cpu():
    assert device.array_module(device.get_device("cpu")) is np


def test_cpu_dtype_policy_is_fp32_and_says_why():
    policy = device.dtype_policy(device.get_device("cpu"))
    assert policy.compute == torch.float32
    has_bf16 = device.native_low_precision()["bfloat16"]
    assert ("has bf16 instructions" in policy.reason) == has_bf16, policy.reason


# Flags every CPU of an architecture has: x86-64 made SSE2 part of the base instruction set, AArch64 Advanced SIMD.
BASELINE_FLAGS = {"x86_64": {"sse", "sse2"}, "AMD64": {"sse", "sse2"}, "aarch64": {"asimd"}, "arm64": {"asimd"}}


def test_cpu_flags_are_read_from_this_cpu():
    machine = platform.machine()
    if machine not in BASELINE_FLAGS:
        pytest.skip(f"no baseline flags known for a {machine} CPU")
    flags = device.cpu_flags()
    assert BASELINE_FLAGS[machine] <= flags, f"a {machine} CPU has {BASELINE_FLAGS[machine]}; read {sorted(flags)}"
    cpuinfo = Path("/proc/cpuinfo")
    if machine == "x86_64" and cpuinfo.exists():  # Linux: the kernel's own list of this CPU's flags
        listed = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M).group(1).split())
        for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"):
            assert (flag in flags) == (flag in listed), flag


@pytest.mark.parametrize(
    ("flags", "bfloat16", "float16"),
    [
        (set(), False, False),
        ({"sse2", "avx2", "fma"}, False, False),  # AVX2 only: bf16 and fp16 are emulated
        ({"avx512f", "avx512_bf16"}, True, False),  # Cooper Lake, Zen 4
        ({"avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"}, True, True),  # Sapphire Rapids
        ({"asimd", "asimdhp"}, False, True),  # Armv8.2 half precision
        ({"asimd", "asimdhp", "bf16"}, True, True),  # Armv8.6, e.g. Graviton 3
    ],
)
def test_native_low_precision_follows_the_flags(monkeypatch, flags, bfloat16, float16):
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))
    assert device.native_low_precision() == {"bfloat16": bfloat16, "float16": float16}
    reason = device.dtype_policy(device.get_device("cpu")).reason
    assert ("has bf16 instructions" in reason) == bfloat16, reason


def test_thread_count_round_trips_and_rejects_nonsense():
    before = device.thread_count()
    try:
        device.set_thread_count(1)
        assert device.thread_count() == 1
    finally:
        device.set_thread_count(before)
    with pytest.raises(ValueError, match="thread count"):
        device.set_thread_count(0)


@pytest.mark.gpu
def test_cuda_device_runs_a_kernel():
    d = device.get_device("cuda")
    x = torch.ones(1024, device=d.torch)
    d.synchronize()
    assert float(x.sum()) == 1024


@cuda.jit
def _block_and_thread(out):
    """out[i] = block * 100 + thread, one element per thread (`cuda` must be a global: the simulator swaps it)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = cuda.blockIdx.x * 100 + cuda.threadIdx.x


def test_numba_runs_cuda_kernels_on_its_simulator_without_a_gpu():
    if device.cuda_available():
        pytest.skip("this machine has a GPU: Numba uses it, not the simulator")
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "tests/conftest.py must set it before Numba is imported"
    assert numba.config.ENABLE_CUDASIM, "Numba was imported before NUMBA_ENABLE_CUDASIM was set"
    out = cuda.device_array(10, np.int32)
    _block_and_thread[3, 4](out)  # 12 threads for 10 elements: the last block's two spare threads write nothing
    np.testing.assert_array_equal(out.copy_to_host(), [0, 1, 2, 3, 100, 101, 102, 103, 200, 201])


def test_bf16_route_says_what_a_bf16_matmul_costs_here():
    """The route read from the flags must match what a bf16 matmul measures against fp32 on this CPU."""
    route = device.bf16_matmul_route()
    a32, b32 = torch.randn(256, 256), torch.randn(256, 256)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    # on one thread: with two, a 0.2 ms fp32 matmul waits at OpenMP's barrier for a thread the other test
    # worker descheduled (a scheduler tick, ms), which once in CI made fp32 look as slow as the fallback (2.0x)
    with device.threads(1):
        ratio = bench.compare(lambda: a16 @ b16, lambda: a32 @ b32, repeat=5).speedup  # bf16 time / fp32 time
    if route.slow:  # generic fallback: measured 40-100x on Zen 2
        assert ratio > 5, f"{route}: bf16 took only {ratio:.1f}x fp32"
    else:  # native or emulated in oneDNN: measured 0.5-1.6x
        assert ratio < 4, f"{route}: bf16 took {ratio:.1f}x fp32"


def test_bf16_route_falls_back_without_avx512(monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert device.bf16_matmul_route().route == "native"
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx2"}))
    assert device.bf16_matmul_route().route in {"onednn-emulated", "fallback"}  # oneDNN asks the CPU itself


def test_threads_sets_torch_and_numba_for_a_block_and_restores_them_after_an_error():
    before, numba_before = device.thread_count(), numba.get_num_threads()
    with pytest.raises(KeyError), device.threads(1):
        assert (device.thread_count(), numba.get_num_threads()) == (1, 1)
        raise KeyError("inside the block")
    assert (device.thread_count(), numba.get_num_threads()) == (before, numba_before)
    with pytest.raises(ValueError, match="thread count must be between 1"), device.threads(0):
        pass
    assert device.thread_count() == before
