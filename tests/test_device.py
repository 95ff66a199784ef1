import numpy as np
import pytest
import torch

from common import device


def test_describe_names_the_machine():
    info = device.describe()
    for key in ("cpu", "cores (logical)", "memory (GiB)", "device", "gpu", "torch", "compute dtype"):
        assert key in info, key
    assert info["cores (logical)"] >= 1
    assert info["memory (GiB)"] > 0


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


def test_checks_never_raise():
    assert isinstance(device.cuda_available(), bool)
    assert isinstance(device.cupy_available(), bool)


def test_array_module_is_numpy_on_cpu():
    assert device.array_module(device.get_device("cpu")) is np


def test_cpu_dtype_policy_is_fp32_and_says_why():
    policy = device.dtype_policy(device.get_device("cpu"))
    assert policy.compute == torch.float32
    has_bf16 = device.native_low_precision()["bfloat16"]
    assert ("has bf16 instructions" in policy.reason) == has_bf16, policy.reason


def test_cpu_flags_are_read_and_low_precision_follows_them():
    flags = device.cpu_flags()
    assert "sse2" in flags or "asimd" in flags or not flags, "x86 and Arm CPUs report a basic SIMD flag"
    native = device.native_low_precision()
    assert set(native) == {"bfloat16", "float16"}
    for dtype, has in native.items():
        assert has == bool(flags & device.LOW_PRECISION_FLAGS[dtype])


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


def test_numba_runs_cuda_kernels_on_its_simulator_without_a_gpu():
    import os

    if device.cuda_available():
        pytest.skip("this machine has a GPU: Numba uses it, not the simulator")
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "tests/conftest.py must set it before Numba is imported"
