"""CUDA kernels: Numba CUDA (on the simulator without a GPU), CUDA C sources (compiled by nvcc, run on CPU
threads by g++), the ptxas resource report, and the CuPy backend (GPU only).

Simulated launches are kept to a few hundred threads: the simulator runs every
CUDA thread as a Python thread.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from common.kernels import reference
from common.kernels.analysis import cuda_build
from common.kernels.backends import cuda_c, cupy_ops, numba_cuda
from common.kernels.registry import status
from tests.kernels.tolerances import tolerance

HAS_NVCC = cuda_build.nvcc_available()
needs_nvcc = pytest.mark.skipif(not HAS_NVCC, reason="needs nvcc (CUDA toolkit)")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the CUDA C sources for the CPU")

RNG = np.random.default_rng(2024)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def close(got: np.ndarray, want: np.ndarray, reduction: int = 1) -> None:
    rtol, atol = tolerance("float32", reduction)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# --- Which CUDA target Numba runs -------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="numba-cuda has no macOS wheels: numba's built-in target stays")
def test_numba_cuda_is_nvidias_package_not_the_deprecated_built_in_target():
    """numba-cuda's import redirector (a .pth file) serves `numba.cuda` from the numba_cuda package.

    If it is not installed, or numba stops honouring the redirect, `numba.cuda` is numba's own deprecated
    copy again ("Built-in"), and this fails before any kernel silently runs on it.
    """
    import numba_cuda  # type: ignore[import-untyped]  # numba-cuda ships no type stubs
    from numba import cuda

    assert cuda.implementation == "NVIDIA", cuda.implementation
    assert Path(cuda.__file__).is_relative_to(Path(numba_cuda.__file__).parent), cuda.__file__


# --- Numba CUDA: each kernel against NumPy, tiny launches ----------------------------------------------


def test_thread_coordinates_follow_the_grid():
    rows = numba_cuda.thread_coordinates(blocks=3, threads=4)
    block, thread, size, index = rows.T
    assert (size == 4).all()
    np.testing.assert_array_equal(index, block * 4 + thread)  # cuda.grid(1)
    np.testing.assert_array_equal(index, np.arange(12))


def test_vector_add_covers_a_partial_last_block():
    a, b = f32(300), f32(300)  # 3 blocks of 128: the last one is 84 threads short
    np.testing.assert_array_equal(numba_cuda.add_vectors(a, b), a + b)


def test_block_sum_tree_reduction():
    x = f32(300)
    assert numba_cuda.sum_vector(x, threads=64) == pytest.approx(float(x.astype(np.float64).sum()), abs=1e-4)
    with pytest.raises(ValueError, match="power of two"):
        numba_cuda.sum_vector(x, threads=48)


def test_softmax_rows():
    x = f32(3, 37) * 4
    close(numba_cuda.softmax(x), reference.softmax(x))


def test_layernorm_rows():
    x, w, b = f32(2, 45) + 3, f32(45), f32(45)
    close(numba_cuda.layernorm(x, w, b, eps=1e-5), reference.layernorm(x, w, b, 1e-5), 45)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_and_bias_gelu(approximate):
    x, bias = f32(3, 50) * 3, f32(50)
    close(numba_cuda.gelu(x, approximate), reference.gelu(x, approximate))
    close(numba_cuda.bias_gelu(x, bias, approximate), reference.bias_gelu(x, bias, approximate))


def test_matmul_tiled_edges():
    a, b = f32(17, 20), f32(20, 5)  # neither m nor k is a multiple of TILE: the zero padding is exercised
    close(numba_cuda.matmul(a, b), reference.matmul(a, b), 20)


@pytest.mark.parametrize("algorithm", ["naive", "flash"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention(algorithm, causal):
    q, k, v = f32(2, 1, 6, 8), f32(2, 1, 6, 8), f32(2, 1, 6, 3)  # v's head_dim differs from q's
    close(numba_cuda.attention(q, k, v, causal, algorithm), reference.attention(q, k, v, causal), 6)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_streams_several_key_tiles(causal):
    q, k, v = f32(1, 5, 8), f32(1, 70, 8), f32(1, 70, 8)  # 70 keys: tiles of 32, 32 and a partial 6
    got = numba_cuda.attention(q, k, v, causal, "flash", scale=0.3)
    close(got, reference.attention(q, k, v, causal, scale=0.3), 70)


def test_flash_attention_refuses_head_dims_wider_than_its_tiles():
    q = f32(1, 2, numba_cuda.FLASH_MAX_HEAD_DIM + 1)
    with pytest.raises(ValueError, match="head_dim"):
        numba_cuda.attention(q, q, q, algorithm="flash")


def test_through_the_op_api():
    from common.kernels import softmax

    assert status("numba-cuda") is None
    x = f32(2, 33)
    close(softmax(x, backend="numba-cuda"), reference.softmax(x))


# --- CUDA C sources run on CPU threads, through cupy_ops's own launch code --------------------------------


@pytest.fixture
def cupy_ops_on_cpu(monkeypatch):
    """cupy_ops with NumPy for CuPy and g++-built kernels for NVRTC-built ones: the same host code, on the CPU."""
    from common.kernels.backends import cuda_cpu

    monkeypatch.setattr(cupy_ops, "_cupy", lambda: np)
    monkeypatch.setattr(cupy_ops, "_function", cuda_cpu.function)
    return cupy_ops


@needs_gxx
def test_cuda_c_elementwise_and_reductions_on_cpu(cupy_ops_on_cpu):
    ops = cupy_ops_on_cpu
    a, b = f32(300), f32(300)
    np.testing.assert_array_equal(ops.add_vectors(a, b), a + b)
    assert ops.sum_vector(a, threads=64) == pytest.approx(float(a.astype(np.float64).sum()), abs=1e-4)
    x, w, bias = f32(3, 37) * 3, f32(37), f32(37)
    close(ops.softmax(x), reference.softmax(x))
    close(ops.layernorm(x, w, bias), reference.layernorm(x, w, bias), 37)
    for approximate in ("none", "tanh"):
        close(ops.gelu(x, approximate), reference.gelu(x, approximate))
        close(ops.bias_gelu(x, bias, approximate), reference.bias_gelu(x, bias, approximate))


@needs_gxx
def test_cuda_c_matmul_and_attention_on_cpu(cupy_ops_on_cpu):
    ops = cupy_ops_on_cpu
    a, b = f32(17, 20), f32(20, 5)
    close(ops.matmul(a, b), reference.matmul(a, b), 20)
    q, k, v = f32(2, 7, 8), f32(2, 40, 8), f32(2, 40, 4)
    for algorithm in ("naive", "flash"):
        for causal in (False, True):
            close(ops.attention(q, k, v, causal, algorithm), reference.attention(q, k, v, causal), 40)


@needs_gxx
def test_cpu_kernels_check_their_arguments():
    from common.kernels.backends import cuda_cpu

    kernel = cuda_cpu.function("vector_add", "vector_add")
    assert kernel.params == ["const float*", "const float*", "float*", "int"]
    with pytest.raises(TypeError, match="takes 4 arguments"):
        kernel((1,), (32,), (f32(4), f32(4), f32(4)))
    with pytest.raises(KeyError, match="no kernel"):
        cuda_cpu.function("vector_add", "vector_sub")


# --- the sources agree with each other ------------------------------------------------------------------


def _defines(name: str) -> dict[str, int]:
    text = cuda_c.cuda_sources()[name].read_text()
    return {k: int(v) for k, v in re.findall(r"#define (\w+) (\d+)\b", text)}


def test_launch_constants_match_the_cuda_sources():
    for source in ("block_reduce", "softmax", "layernorm"):
        assert _defines(source)["MAX_THREADS"] == cupy_ops.MAX_THREADS == numba_cuda.MAX_THREADS
    assert _defines("matmul")["TILE"] == cupy_ops.TILE == numba_cuda.TILE
    assert _defines("attention")["BLOCK"] == cupy_ops.FLASH_BLOCK == numba_cuda.FLASH_BLOCK
    assert _defines("attention")["MAX_HEAD_DIM"] == cupy_ops.FLASH_MAX_HEAD_DIM == numba_cuda.FLASH_MAX_HEAD_DIM


def test_cuda_c_and_numba_define_the_same_kernels():
    from common.kernels.backends.cuda_cpu import kernel_parameters

    in_cuda = set()
    for path in cuda_c.cuda_sources().values():
        in_cuda |= set(kernel_parameters(path.read_text()))
    assert in_cuda == set(numba_cuda.KERNEL_SIGNATURES) - {"thread_indices"} == set(cupy_ops.LAUNCH_THREADS)


def test_cuda_sources_compile_under_nvrtc_rules():
    """CuPy compiles with NVRTC, which has no system headers: no #include, no INFINITY, no size_t."""
    for name, path in cuda_c.cuda_sources().items():
        code = re.sub(r"//.*", "", path.read_text())
        for banned in (r"#include", r"\bINFINITY\b", r"\bsize_t\b"):
            assert not re.search(banned, code), f"{name}.cu uses {banned}"


# --- the ptxas report -----------------------------------------------------------------------------------

# Captured from `nvcc -cubin -arch=sm_80 -Xptxas -v` (CUDA 13.0) on cuda/block_reduce.cu and attention.cu.
PTXAS_13 = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'block_sum_racy' for 'sm_80'
ptxas info    : Function properties for block_sum_racy
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 1024 bytes smem, 372 bytes cmem[0]
ptxas info    : Compile time = 3.170 ms
ptxas info    : Compiling entry function 'flash_attention_forward' for 'sm_80'
ptxas info    : Function properties for flash_attention_forward
    1200 bytes stack frame, 84 bytes spill stores, 148 bytes spill loads
ptxas info    : Used 24 registers, used 1 barriers, 1200 bytes cumulative stack size, 32768 bytes smem, \
404 bytes cmem[0], 8 bytes cmem[2]
ptxas info    : Compile time = 40.521 ms
"""

# The CUDA 11/12 layout: no barrier count; a non-inlined device function has properties but no entry.
PTXAS_11 = """\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperf
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z6kernelPfi' for 'sm_75'
ptxas info    : Function properties for _Z6kernelPfi
    16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, 2048 bytes smem, 364 bytes cmem[0]
"""


def test_parse_ptxas_cuda_13():
    found = cuda_build.parse_ptxas(PTXAS_13)
    assert set(found) == {"block_sum_racy", "flash_attention_forward"}
    racy = found["block_sum_racy"]
    assert (racy.registers, racy.shared_bytes, racy.barriers, racy.constant_bytes) == (10, 1024, 0, 372)
    flash = found["flash_attention_forward"]
    assert (flash.registers, flash.spill_stores, flash.spill_loads, flash.stack_bytes) == (24, 84, 148, 1200)
    assert (flash.shared_bytes, flash.constant_bytes, flash.barriers, flash.arch) == (32768, 412, 1, "sm_80")


def test_parse_ptxas_cuda_11_layout():
    (kernel,) = cuda_build.parse_ptxas(PTXAS_11).values()
    assert kernel.kernel == "_Z6kernelPfi" and kernel.arch == "sm_75"
    assert (kernel.registers, kernel.shared_bytes, kernel.stack_bytes, kernel.spill_stores) == (40, 2048, 16, 4)
    assert kernel.barriers is None


def test_missing_toolkit_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert not cuda_build.nvcc_available()
    with pytest.raises(cuda_build.ToolkitMissing, match=re.escape(cuda_build.NVCC_MISSING)):
        cuda_build.compile_cubin("__global__ void k() {}\n", arch="sm_86")


@needs_nvcc
def test_every_cuda_source_compiles_with_its_resources():
    for name, path in cuda_c.cuda_sources().items():
        report = cuda_build.compile_cubin(path)
        assert report.arch == "sm_80" and report.kernels, name
        for k in report.kernels.values():
            assert 0 < k.registers <= 255 and k.spill_stores == 0, k  # 255: the most a thread may hold
    assert cuda_build.compile_cubin("matmul")["matmul_tiled"].shared_bytes == 2 * 16 * 16 * 4  # two float tiles
    reduce = cuda_build.compile_cubin("block_reduce")
    assert reduce["block_sum"].barriers == 1 and reduce["block_sum_racy"].barriers == 0


@needs_nvcc
def test_register_cap_forces_spills():
    capped = cuda_build.compile_cubin("attention", options=("-maxrregcount=24",))["flash_attention_forward"]
    free = cuda_build.compile_cubin("attention")["flash_attention_forward"]
    assert capped.registers <= 24 < free.registers
    assert capped.spill_stores > 0 and free.spill_stores == 0


@needs_nvcc
def test_compile_errors_carry_the_compiler_message():
    with pytest.raises(cuda_build.CompileError, match="undefined"):
        cuda_build.compile_cubin('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')
    with pytest.raises(FileNotFoundError):
        cuda_build.compile_cubin("missing.cu")


@needs_nvcc
def test_ptx_text():
    ptx = cuda_build.compile_ptx("vector_add")
    assert ".target sm_80" in ptx and ".visible .entry vector_add(" in ptx


@needs_nvcc
def test_numba_kernels_report_under_their_python_names():
    report = cuda_build.numba_report("sm_80")
    assert set(report.kernels) == set(numba_cuda.KERNEL_SIGNATURES)
    in_c = {
        name: k for path in cuda_c.cuda_sources().values() for name, k in cuda_build.compile_cubin(path).kernels.items()
    }
    for name, kernel in report.kernels.items():
        assert 0 < kernel.registers <= 255 and kernel.spill_stores == 0, kernel  # 255: sm_80's most per thread
        if name in in_c:  # the same algorithm stages the same shared arrays in both languages
            assert kernel.shared_bytes == in_c[name].shared_bytes, (name, kernel, in_c[name])
    assert report["matmul_tiled"].shared_bytes == 2 * numba_cuda.TILE**2 * 4
    assert report["flash_attention_forward"].shared_bytes == 2 * 32 * 128 * 4
    assert report["block_sum"].barriers == 1 and report["block_sum_racy"].barriers == 0
    # Every kernel computes in float32: one stray float64 constant would show up as .f64 instructions.
    for name, ptx in cuda_build.numba_ptx("sm_80").items():
        assert not re.search(r"\.f64\b", ptx), name


TINY_TRITON = """
import triton
import triton.language as tl


@triton.jit
def scale_kernel(x_ptr, y_ptr, n, factor, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) * factor, mask=offsets < n)
"""


@needs_nvcc
def test_triton_kernels_compile_for_a_gpu_without_one(tmp_path, monkeypatch):
    (tmp_path / "tiny_triton.py").write_text(TINY_TRITON)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    signature = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "factor": "fp32", "BLOCK": "constexpr"}
    report = cuda_build.triton_report("tiny_triton", "scale_kernel", signature, {"BLOCK": 256}, num_warps=2)
    kernel = report["scale_kernel"]
    assert 0 < kernel.registers <= 255 and kernel.arch == "sm_80"
    assert kernel.threads == 64  # num_warps * 32: Triton fixes the block size when it compiles
    with pytest.raises(cuda_build.CompileError, match="has no attribute"):
        cuda_build.triton_report("tiny_triton", "no_such_kernel", signature, {"BLOCK": 256})


# --- the CuPy backend -----------------------------------------------------------------------------------


def test_cupy_backend_says_why_it_cannot_run():
    from common.device import cupy_available

    if cupy_available():
        assert status("cupy") is None
    else:
        assert "GPU" in status("cupy")


@pytest.mark.gpu
def test_cupy_backend_on_the_gpu():
    import cupy

    from common.kernels import attention, layernorm, matmul, softmax

    x, w, b = f32(4, 100), f32(100), f32(100)
    close(cupy.asnumpy(softmax(cupy.asarray(x), backend="cupy")), reference.softmax(x))
    close(layernorm(x, w, b, backend="cupy"), reference.layernorm(x, w, b), 100)
    a, c = f32(70, 33), f32(33, 40)
    close(matmul(a, c, backend="cupy"), reference.matmul(a, c), 33)
    q, k, v = f32(2, 50, 16), f32(2, 90, 16), f32(2, 90, 16)
    for algorithm in ("naive", "flash"):
        close(attention(q, k, v, True, algorithm, backend="cupy"), reference.attention(q, k, v, True), 90)
