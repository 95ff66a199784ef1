"""The CPU backends from the inside: parallel loops, the on-disk cache, SIMD, the vector math, the C++ extension."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import llvmlite.binding  # type: ignore[import-untyped]  # llvmlite ships no type stubs
import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit, types

from common.device import cpu_flags
from common.kernels import reference
from common.kernels.analysis import simd
from common.kernels.backends import numba_cpu
from common.kernels.demos import simd_examples
from tests.kernels.tolerances import tolerance

ROOT = Path(__file__).resolve().parents[2]
F32 = types.Array(types.float32, 1, "C")
F64 = types.Array(types.float64, 1, "C")
KERNELS = [
    numba_cpu._softmax_kernel,
    numba_cpu._layernorm_kernel,
    numba_cpu._gelu_kernel,
    numba_cpu._bias_gelu_kernel,
    numba_cpu._matmul_kernel,
]


# --- parallel and cached -----------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_kernels_are_parallel_and_cached(kernel) -> None:
    assert kernel.targetoptions.get("parallel") is True, f"{kernel.__name__} is not @njit(parallel=True)"
    assert kernel._cache.__class__.__name__ == "FunctionCache", f"{kernel.__name__} is not @njit(cache=True)"


def test_prange_became_a_parallel_loop() -> None:
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    numba_cpu.softmax(x)  # other tests in this process may have compiled other signatures: name this one
    f32 = next(s for s in numba_cpu._softmax_kernel.signatures if s[0].dtype == numba.float32)
    assert simd.parallel_loops(numba_cpu._softmax_kernel, f32) == 1
    simd_examples.total(x[0])
    f32 = next(s for s in simd_examples.total.signatures if s[0].dtype == numba.float32)
    assert simd.parallel_loops(simd_examples.total, f32) == 0


def test_results_do_not_depend_on_the_thread_count() -> None:
    import numba

    x = np.random.default_rng(1).standard_normal((64, 129)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal(129).astype(np.float32)
    many = numba_cpu.softmax(x), numba_cpu.bias_gelu(x, b), numba_cpu.matmul(x, x.T.copy())
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = numba_cpu.softmax(x), numba_cpu.bias_gelu(x, b), numba_cpu.matmul(x, x.T.copy())
    finally:
        numba.set_num_threads(before)
    for a, b_ in zip(many, one, strict=True):
        np.testing.assert_array_equal(a, b_)  # rows are split among threads, never a row's sum


def test_a_second_process_loads_the_kernels_from_the_cache() -> None:
    x, w = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)
    numba_cpu.layernorm(x, w, w)  # compiled (or loaded) here, so the cache holds it now
    script = textwrap.dedent(
        """
        import numpy as np
        from common.kernels.backends import numba_cpu
        x, w = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)
        numba_cpu.layernorm(x, w, w)
        stats = numba_cpu._layernorm_kernel.stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    hits, misses = map(int, run.stdout.split())
    assert (hits, misses) == (1, 0), f"the second process compiled again: {run.stdout} {run.stderr[-500:]}"


# --- SIMD ------------------------------------------------------------------------


def _compiled_examples() -> None:
    x = np.arange(1, 65, dtype=np.float32)
    simd_examples.multiply_add(x, x, x, np.empty_like(x))
    simd_examples.recurrence(x.copy(), np.float32(0.5), x)
    simd_examples.total(x)
    simd_examples.total_reassociated(x)


def test_independent_iterations_vectorise() -> None:
    _compiled_examples()
    packed = simd.packed_simd_instructions(simd.assembly(simd_examples.multiply_add))
    assert any(k.startswith(("vmulps", "vfmadd")) for k in packed), packed
    assert simd.vector_lanes(simd.llvm_ir(simd_examples.multiply_add)) >= 4  # at least SSE's four float lanes


def test_a_loop_carried_dependency_does_not() -> None:
    _compiled_examples()
    asm = simd.assembly(simd_examples.recurrence)
    assert not simd.packed_simd_instructions(asm), simd.packed_simd_instructions(asm)
    assert simd.scalar_float_instructions(asm), "the recurrence must still compute, one lane at a time"
    assert simd.vector_lanes(simd.llvm_ir(simd_examples.recurrence)) == 1


def test_a_float_sum_vectorises_only_when_it_may_reassociate() -> None:
    _compiled_examples()
    strict = simd.packed_simd_instructions(simd.assembly(simd_examples.total))
    reordered = simd.packed_simd_instructions(simd.assembly(simd_examples.total_reassociated))
    assert not strict, strict
    assert any(k.startswith("vaddp") for k in reordered), reordered
    x = np.random.default_rng(3).standard_normal(10_001)
    assert simd_examples.total(x) == pytest.approx(simd_examples.total_reassociated(x), rel=1e-12)


def test_instruction_counting_reads_att_syntax() -> None:
    asm = "\tvfmadd231ps\t%zmm1, %zmm2, %zmm0\n\tvmulss\t%xmm1, %xmm2, %xmm0\n\tvmovups\t(%rax), %ymm0\n"
    assert simd.packed_simd_instructions(asm) == {"vfmadd231ps zmm": 1}
    assert simd.scalar_float_instructions(asm) == {"vmulss xmm": 1}
    assert simd.llvm_vector_types("%a = fadd <8 x float> %b, %c\n<8 x float> <4 x double>") == {
        "<8 x float>": 2,
        "<4 x double>": 1,
    }


def test_widest_packed_register_reads_the_arithmetic_not_the_moves() -> None:
    asm = (
        "\tvmovups\t(%rax), %zmm0\n"  # a move, not arithmetic: does not count
        "\tvfmadd231ps\t%ymm1, %ymm2, %ymm0\n\tvmulps\t%xmm1, %xmm2, %xmm0\n\tvaddpd\t%zmm1, %zmm2, %zmm0\n"
    )
    assert simd.widest_packed_register(asm) == "ymm"  # float32
    assert simd.widest_packed_register(asm, "pd") == "zmm"
    assert simd.widest_packed_register("\tvmulss\t%xmm1, %xmm2, %xmm0\n") is None
    assert [simd.float32_lanes(r) for r in ("xmm", "ymm", "zmm", None)] == [4, 8, 16, 1]
    with pytest.raises(ValueError, match="precision"):
        simd.widest_packed_register(asm, "float")


def test_the_emitted_width_is_one_the_cpu_has() -> None:
    """LLVM may choose narrower vectors than the CPU has (prefer-256-bit on Intel AVX-512), never wider."""
    _compiled_examples()
    widest = simd.widest_packed_register(simd.assembly(simd_examples.multiply_add))
    flags = cpu_flags()
    allowed = {"xmm"} | ({"ymm"} if "avx" in flags else set()) | ({"zmm"} if "avx512f" in flags else set())
    assert widest in allowed, (widest, simd.target_cpu())
    assert simd.target_cpu() == (os.environ.get("NUMBA_CPU_NAME") or llvmlite.binding.get_host_cpu_name())


def test_inspecting_needs_one_signature_or_an_explicit_one() -> None:
    @njit
    def triple(x):
        return x * 3.0

    triple(1.0), triple(np.float32(1.0))
    with pytest.raises(ValueError, match="pass signature="):
        simd.assembly(triple)
    assert "vmulsd xmm" in simd.scalar_float_instructions(simd.assembly(triple, (types.float64,)))


@pytest.mark.parametrize(
    ("helper", "signature"),
    [
        (numba_cpu._exp_shifted_sum, (F32, types.float32, F32)),
        (numba_cpu._normalise, (F32, types.float64, types.float64, F32, F32, F32)),
        (numba_cpu._gelu_span, (F32, F32, types.boolean)),
        (numba_cpu._bias_gelu_span, (F32, F32, F32, types.boolean)),
        (numba_cpu._axpy4, (F32, *[types.float32] * 4, *[F32] * 4)),
    ],
    ids=lambda h: getattr(h, "__name__", ""),
)
def test_the_row_loops_of_the_float32_kernels_are_simd(helper, signature) -> None:
    """Guards what silently breaks vectorisation: a division's zero check, a negative-index check, a branch,
    and a float64 accumulator, which sets the vector width to that of doubles: the float32 arithmetic then
    runs on half-width registers (xmm with AVX2) while only the adds of the sum use ymm."""
    packed = simd.packed_simd_instructions(simd.assembly(helper, signature))
    single = [k for k in packed if k.split()[0].endswith("ps")]  # packed single precision
    assert any(k.endswith(("ymm", "zmm")) for k in single), f"{helper.__name__}: {packed}"


def test_softmax_of_a_long_row_sums_to_one() -> None:
    n = 1 << 20  # 4096 blocks of float32 partial sums, added in float64
    x = np.random.default_rng(3).standard_normal((2, n)).astype(np.float32) * 4
    got = numba_cpu.softmax(x)
    assert np.abs(got.astype(np.float64).sum(axis=1) - 1.0).max() < 1e-5
    rtol, atol = tolerance("float32", n)
    np.testing.assert_allclose(got, reference.softmax(x), rtol=rtol, atol=atol)


@njit
def _row_max(x):  # pragma: no cover - compiled
    return numba_cpu.row_max(x)


def test_the_max_vectorises_as_integers() -> None:
    # The width is LLVM's choice for this CPU: <16 x i32> with AVX-512, <4 x i32> interleaved four times on
    # a Zen 2 with AVX2. Any vector of i32 keys means the reduction left the scalar path.
    ir = simd.llvm_ir(_row_max, (F32,))
    assert simd.vector_lanes(ir, "i32") >= 4, simd.llvm_vector_types(ir)


# --- the vector math -----------------------------------------------------------------


@njit
def _map_into(fn, x, out):  # pragma: no cover - compiled
    for i in range(x.size):
        out[i] = fn(x[i])


def _map(fn, x: np.ndarray) -> np.ndarray:
    """`fn` (an @njit scalar function) applied to every element of x inside compiled code."""
    out = np.empty_like(x)
    _map_into(fn, x, out)
    return out


def test_exp32_is_within_two_ulp_over_its_range() -> None:
    x = np.linspace(-103.0, 88.7, 400_001, dtype=np.float32)
    got = _map(numba_cpu.exp32, x)
    want = np.exp(x.astype(np.float64))
    normal = want > np.finfo(np.float32).tiny
    ulp = np.spacing(want[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[normal] - want[normal]) / ulp) <= 2.0
    assert np.all(np.abs(got[~normal] - want[~normal]) <= 2 * np.spacing(np.float32(0)))


def test_exp32_and_erf32_special_values() -> None:
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 89.0, -200.0, 1e30, -1e30], dtype=np.float32)
    e, f = _map(numba_cpu.exp32, special), _map(numba_cpu.erf32, special)
    np.testing.assert_array_equal(e, [np.inf, 0.0, np.nan, 1.0, 1.0, np.inf, 0.0, np.inf, 0.0])
    np.testing.assert_array_equal(f, [1.0, -1.0, np.nan, 0.0, 0.0, 1.0, -1.0, 1.0, -1.0])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-12, 12, width=32, allow_subnormal=False), min_size=1, max_size=200))
def test_erf32_error_is_absolute_far_from_zero_and_relative_near_it(values) -> None:
    x = np.array(values, dtype=np.float32)
    got = _map(numba_cpu.erf32, x)
    want = reference._erf(x.astype(np.float64))
    assert np.max(np.abs(got - want)) < 2e-7  # Abramowitz & Stegun's 1.5e-7, plus float32 rounding
    near = np.abs(x) < 1
    assert np.all(np.abs(got - want)[near] <= 2.5e-7 * np.abs(want[near]))  # no cancellation around 0


def test_gelu_erf32_error_over_its_range_and_special_values() -> None:
    x = np.linspace(-40.0, 40.0, 800_001, dtype=np.float32)
    got = _map(numba_cpu.gelu_erf32, x)
    want = reference.gelu(x.astype(np.float64))
    # erfc's absolute error (A&S: 1.5e-7) times 0.5 |x|, plus a few roundings of float32 steps
    assert np.all(np.abs(got - want) <= 2e-7 * np.abs(x) + 4 * np.spacing(np.abs(want).astype(np.float32)))
    rtol, atol = tolerance("float32")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    special = np.array([np.inf, np.nan, 0.0, -0.0, 1e30, -1e30], dtype=np.float32)
    np.testing.assert_array_equal(
        _map(numba_cpu.gelu_erf32, special), np.array([np.inf, np.nan, 0.0, 0.0, 1e30, -0.0], dtype=np.float32)
    )
    assert np.isnan(
        _map(numba_cpu.gelu_erf32, np.array([-np.inf], dtype=np.float32))[0]
    )  # -inf * (1 + erf(-inf)) = -inf * 0, as in the reference


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=100),
    st.sampled_from([np.float32, np.float64]),
)
def test_row_max_orders_like_floats(values, dtype) -> None:
    x = np.array(values, dtype=dtype)
    assert _row_max(x) == x.max()
    with_nan = np.append(x, dtype(np.nan))
    assert np.isnan(_row_max(with_nan))  # a nan wins, as in np.max


def test_softmax_of_extreme_rows() -> None:
    x = np.array(
        [[1e4, -1e4, 0.0, 1e4], [-np.inf, 0.0, 1.0, -np.inf], [np.nan, 1.0, 2.0, 3.0], [-1e30, -1e30, -1e30, -1e30]],
        dtype=np.float32,
    )
    got = numba_cpu.softmax(x)
    want = reference.softmax(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.isnan(got[2]).all()


def test_layernorm_keeps_its_precision_far_from_zero() -> None:
    """|mean| / std = 1e4: a float32 mean subtracted in float32 would lose half the digits."""
    rng = np.random.default_rng(4)
    x = (1e4 + rng.standard_normal((8, 1000))).astype(np.float32)
    w, b = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    got = numba_cpu.layernorm(x, w, b)
    want = reference.layernorm(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


# --- the C++ extension -----------------------------------------------------------------


@pytest.mark.slow
def test_cpp_extension_matches_the_reference() -> None:
    """Building takes 20-60 s the first time; torch caches the build for the next run."""
    from common.kernels.demos import cpp_ext

    cpp_ext.load()
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (7, 33), (3, 5, 257)]:
        x = torch.from_numpy((3 * rng.standard_normal(shape)).astype(np.float32))
        bias = torch.from_numpy(rng.standard_normal(shape[-1]).astype(np.float32))
        for approximate in ("none", "tanh"):
            got = cpp_ext.bias_gelu_cpp(x, bias, approximate)
            want = reference.bias_gelu(x.double().numpy(), bias.double().numpy(), approximate)
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="must be float32"):
        cpp_ext.bias_gelu_cpp(x.double(), bias.double())
    with pytest.raises(RuntimeError, match=r"bias must have shape \(n,\)"):
        cpp_ext.bias_gelu_cpp(x, bias[:-1])
    with pytest.raises(ValueError, match="approximate must be"):
        cpp_ext.bias_gelu_cpp(x, bias, "erf")


@pytest.mark.parametrize("name", ["softmax", "layernorm", "gelu", "bias_gelu"])
def test_out_writes_into_the_callers_buffer(name) -> None:
    """`out=` (a numba-backend option) skips fresh memory; the result must be the same numbers, in that buffer."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 33), dtype=np.float32) * 4
    vec = rng.standard_normal(33, dtype=np.float32)
    args = {"softmax": (x,), "gelu": (x,), "bias_gelu": (x, vec), "layernorm": (x, vec, vec)}[name]
    fn = getattr(numba_cpu, name)
    buffer = np.full_like(x, np.nan)
    got = fn(*args, out=buffer)
    assert got is buffer
    np.testing.assert_array_equal(buffer, fn(*args))
    with pytest.raises(ValueError, match="out must be"):
        fn(*args, out=np.empty((5, 32), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        fn(*args, out=np.empty((33, 5), np.float32).T)
    with pytest.raises(ValueError, match="overlap"):
        fn(*args, out=x)
