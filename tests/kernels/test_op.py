"""Every op on every backend that can run here, held to the NumPy reference on random inputs.

The cases are collected from `op.backends()`: a backend that can run on this
machine is tested, whatever it is (on a machine without a GPU that includes
Numba's CUDA simulator and Triton's interpreter, on tiny inputs). A runnable
backend whose module is missing or lacks an op fails here, it is not skipped.

Inputs are drawn by Hypothesis: odd and one-element sizes, one row, leading
axes or none, float32 and float64 (and float16 where both sides take it),
values over many magnitudes. softmax, gelu and bias_gelu take any values in
their range, element by element. layernorm, matmul and attention draw normal
values at a drawn scale and offset instead: their rounding error grows with
the conditioning of the input (|mean| / std, cancellation in a dot product),
which a float32 kernel cannot beat and a test should not ask it to.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.kernels import BACKENDS, OPS, op, reference
from common.kernels import tolerance as library_tolerance
from common.kernels.ops import TOLERANCES
from common.kernels.registry import is_slow_emulation, status
from tests.kernels.tolerances import PINNED, tolerance

CASES = [(name, backend) for name, kernel in OPS.items() for backend in kernel.backends()]
FAST_EXAMPLES = 25
SLOW_EXAMPLES = 5  # a simulated CUDA launch or an interpreted Triton program takes seconds
SLOW_ELEMENTS = 512  # and its inputs stay tiny


def _dtypes(backend: str) -> list[str]:
    """The dtypes both the backend and the reference take (reference has no bfloat16)."""
    return [d for d in ("float32", "float64", "float16") if d in BACKENDS[backend].dtypes]


# --- inputs ------------------------------------------------------------------


@st.composite
def _shape(draw, slow: bool, max_rows: int = 12) -> tuple[int, ...]:
    """(..., n): zero to two leading axes, an odd, prime, power-of-two or one-element last axis."""
    limit = SLOW_ELEMENTS if slow else 4096
    n = draw(st.one_of(st.sampled_from([1, 2, 3, 7, 16, 31, 33, 64, 127, 129, 257]), st.integers(1, 300)))
    n = min(n, limit)
    # A simulated GPU runs every thread of every block as a Python thread: few rows (blocks) there.
    lead = draw(st.lists(st.integers(1, 3 if slow else max_rows), max_size=2))
    while lead and math.prod(lead) * n > limit:
        lead.pop()
    return (*lead, n)


def _elements(draw, shape, dtype: str, bound: float) -> np.ndarray:
    """Hypothesis chooses every element (fills, repeats, extremes of the range), never all zeros."""
    width = {"float16": 16, "float32": 32, "float64": 64}[dtype]
    bound = min(bound, 6e4) if dtype == "float16" else bound
    elements = st.floats(-bound, bound, width=width, allow_subnormal=False)
    return draw(hnp.arrays(np.dtype(dtype), shape, elements=elements).filter(lambda a: bool(a.any())))


def _normal(draw, shape, dtype: str, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


_SCALES = st.sampled_from([1e-2, 0.3, 1.0, 3.0, 50.0])


def _draw_softmax(draw, dtype, slow):
    shape = draw(_shape(slow))
    bound = draw(st.sampled_from([1.0, 30.0, 1e4]))  # 1e4: exp overflows at 89 unless the max is subtracted
    return (_elements(draw, shape, dtype, bound),), {}, shape[-1]


def _draw_layernorm(draw, dtype, slow):
    shape = draw(_shape(slow))
    std = draw(_scales_for(dtype))
    x = _normal(draw, shape, dtype, std, draw(st.floats(-10, 10)) * std)
    weight, bias = _normal(draw, shape[-1:], dtype), _normal(draw, shape[-1:], dtype)
    return (x, weight, bias), {"eps": draw(st.sampled_from([1e-5, 1e-3, 0.1]))}, shape[-1]


def _scales_for(dtype):
    return st.sampled_from([0.3, 1.0, 3.0]) if dtype == "float16" else _SCALES


def _draw_gelu(draw, dtype, slow):
    shape = draw(_shape(slow))
    x = _elements(draw, shape, dtype, draw(st.sampled_from([3.0, 10.0, 1e3])))
    return (x,), {"approximate": draw(st.sampled_from(["none", "tanh"]))}, 1


def _draw_bias_gelu(draw, dtype, slow):
    (x,), options, _ = _draw_gelu(draw, dtype, slow)
    return (x, _elements(draw, x.shape[-1:], dtype, 3.0)), options, 1


def _draw_matmul(draw, dtype, slow):
    top = 12 if slow else 70
    m, k, n = (draw(st.one_of(st.sampled_from([1, 3, 17, 64]), st.integers(1, top))) for _ in range(3))
    scale = draw(_scales_for(dtype))
    return (_normal(draw, (m, k), dtype, scale), _normal(draw, (k, n), dtype, scale)), {}, k


def _draw_attention(draw, dtype, slow):
    top_seq = 16 if slow else 80
    lead = draw(st.lists(st.integers(1, 1 if slow else 3), max_size=2))
    seq_q, seq_k = draw(st.integers(1, top_seq)), draw(st.integers(1, top_seq))
    if draw(st.booleans()):
        seq_k = seq_q  # self-attention, the common case
    d = draw(st.sampled_from([1, 3, 8, 16, 64][: 4 if slow else 5]))
    scale = draw(st.sampled_from([0.3, 1.0, 2.0]))
    q, k, v = (_normal(draw, (*lead, s, d), dtype, scale) for s in (seq_q, seq_k, seq_k))
    options = {
        "causal": draw(st.booleans()),
        "algorithm": draw(st.sampled_from(["naive", "flash"])),
        "scale": draw(st.sampled_from([None, 0.25])),
    }
    return (q, k, v), options, max(seq_k, d)


DRAW = {
    "softmax": _draw_softmax,
    "layernorm": _draw_layernorm,
    "gelu": _draw_gelu,
    "bias_gelu": _draw_bias_gelu,
    "matmul": _draw_matmul,
    "attention": _draw_attention,
}


def _within(got: np.ndarray, want: np.ndarray, dtype: str, reduction: int, size: np.ndarray | float) -> np.ndarray:
    """|got - want| <= atol + rtol * max(|want|, size), elementwise.

    `size` is what rounding error is relative to where the result cancels: |a| @ |b| for
    a matmul, max |v| for attention; 0 for the others (plain relative error).
    """
    rtol, atol = tolerance(dtype, reduction)
    return np.abs(got.astype(np.float64) - want) <= atol + rtol * np.maximum(np.abs(want), size)


def _error_scale(name: str, arrays: tuple[np.ndarray, ...]) -> np.ndarray | float:
    a64 = [np.abs(x.astype(np.float64)) for x in arrays]
    if name == "matmul":
        return a64[0] @ a64[1]
    if name == "attention":
        return float(a64[2].max())
    return 0.0


# --- the test ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "backend"), CASES, ids=[f"{n}-{b}" for n, b in CASES])
def test_matches_reference(name: str, backend: str) -> None:
    kernel = OPS[name]
    slow = is_slow_emulation(backend)

    @settings(
        max_examples=SLOW_EXAMPLES if slow else FAST_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        dtype = data.draw(st.sampled_from(_dtypes(backend)), label="dtype")
        arrays, options, reduction = DRAW[name](data.draw, dtype, slow)
        before = [a.copy() for a in arrays]
        got = kernel(*arrays, backend=backend, **options)
        want = getattr(reference, name)(*[a.astype(np.float64) for a in arrays], **options)
        assert isinstance(got, np.ndarray), f"{backend} {name} returned {type(got).__name__} for numpy inputs"
        assert got.dtype == arrays[0].dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
        ok = _within(got, want, dtype, reduction, _error_scale(name, arrays))
        worst = np.unravel_index(np.argmin(ok), ok.shape) if not ok.all() else None
        assert ok.all(), (
            f"{backend} {name}{options} {dtype} {got.shape}: {(~ok).sum()} elements off; "
            f"worst at {worst}: got {got[worst]!r}, reference {want[worst]!r}"
        )
        for a, b in zip(arrays, before, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{backend} {name} wrote into its input")

    check()


def test_the_library_tolerances_are_the_pinned_ones() -> None:
    """Loosening a tolerance in common.kernels.ops fails here: the tests in this folder use the pinned ones."""
    assert set(TOLERANCES) == set(PINNED), "every dtype the library has a tolerance for is pinned in the tests"
    for dtype in PINNED:
        for reduction in (1, 37, 64, 65, 4096, 300 * 64):
            got, pinned = library_tolerance(dtype, reduction), tolerance(dtype, reduction)
            assert got == pytest.approx(pinned, rel=1e-12), f"{dtype}, {reduction} terms: {got} != pinned {pinned}"


def test_every_runnable_backend_is_tested() -> None:
    """The parametrisation above is the registry's view: nothing runnable is left out."""
    assert {(n, b) for n, b in CASES} == {(n, b) for n, k in OPS.items() for b in k.implemented if status(b) is None}
    assert {"reference", "numba", "torch"} <= {b for _, b in CASES}


# --- choosing a backend --------------------------------------------------------


def _inputs(name: str, dtype: str = "float32") -> tuple[tuple[np.ndarray, ...], dict]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 24)).astype(dtype)
    w, b = rng.standard_normal(24).astype(dtype), rng.standard_normal(24).astype(dtype)
    return {
        "softmax": ((x,), {}),
        "layernorm": ((x, w, b), {}),
        "gelu": ((x,), {}),
        "bias_gelu": ((x, b), {}),
        "matmul": ((x, x.T.copy()), {}),
        "attention": ((x[None], x[None], x[None]), {"causal": True}),
    }[name]


@pytest.mark.parametrize("name", OPS)
def test_auto_picks_a_real_backend_that_takes_the_dtype(name: str) -> None:
    kernel = OPS[name]
    arrays, options = _inputs(name)
    chosen = kernel.choose(*arrays)
    assert chosen in kernel.backends() and not is_slow_emulation(chosen)
    assert "float32" in BACKENDS[chosen].dtypes
    assert chosen == kernel.cpu_order[0], "on the CPU the first of cpu_order runs: every CPU backend runs here"
    np.testing.assert_array_equal(kernel(*arrays, **options), kernel(*arrays, backend=chosen, **options))
    half = tuple(a.astype(np.float16) for a in arrays)
    assert "float16" in BACKENDS[kernel.choose(*half)].dtypes  # numba takes no float16: auto moves on


# --- conversions ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_array_type_in_is_array_type_out(backend: str) -> None:
    arrays, options = _inputs("layernorm")
    from_numpy = OPS["layernorm"](*arrays, backend=backend, **options)
    from_torch = OPS["layernorm"](*(torch.from_numpy(a) for a in arrays), backend=backend, **options)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32
    assert from_torch.device.type == "cpu"
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, rtol=1e-6, atol=1e-6)


def test_numpy_to_torch_on_the_cpu_shares_memory() -> None:
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    t = op._convert(x, "torch")
    assert t.data_ptr() == x.ctypes.data, "a contiguous CPU array must reach torch without a copy"
    back = op._convert(t, "numpy")
    assert back.ctypes.data == x.ctypes.data
    strided = x[:, ::2]
    assert op._convert(strided, "torch").is_contiguous()  # copied once to contiguous, not rejected


def test_torch_only_dtypes_say_which_backend_takes_them() -> None:
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    y = OPS["softmax"](x)  # auto: torch takes bfloat16
    assert y.dtype == torch.bfloat16
    np.testing.assert_allclose(y.float().numpy(), torch.softmax(x.float(), -1).numpy(), rtol=2e-2, atol=1e-2)
    with pytest.raises(ValueError, match=r"'numba' takes float32, float64 arrays, got bfloat16"):
        OPS["softmax"](x, backend="numba")


# --- bad input ----------------------------------------------------------------

_X = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
_V6 = np.random.default_rng(2).standard_normal(6).astype(np.float32)
_Q = _X[None]

BAD = [
    ("softmax", (_X.astype(np.int32),), {}, "x must be a floating-point array"),
    ("softmax", (np.ones((3, 0), np.float32),), {}, r"x must have .* no empty axis"),
    ("softmax", (np.array(1.5, np.float32),), {}, "at least one axis"),
    ("layernorm", (_X, _V6[:5], _V6), {}, r"weight must have shape \(6,\)"),
    ("layernorm", (_X, _V6, _V6[:, None]), {}, r"bias must have shape \(6,\)"),
    ("layernorm", (_X, _V6, _V6), {"eps": 0.0}, "eps must be a number > 0"),
    ("layernorm", (_X, _V6.astype(np.float64), _V6), {}, "share one dtype"),
    ("gelu", (_X,), {"approximate": "sigmoid"}, "approximate must be one of"),
    ("bias_gelu", (_X, _V6[:4]), {}, r"bias must have shape \(6,\)"),
    ("matmul", (_X, _X), {}, r"b must be \(6, n\)"),
    ("matmul", (_Q, _X.T.copy()), {}, "matmul takes 2-D a"),
    ("attention", (_Q, _Q[..., :5], _Q), {}, "q and k must share head_dim"),
    ("attention", (_Q, _Q, _Q[:, :3]), {}, "k and v must have the same sequence length"),
    ("attention", (_Q, np.stack([_X, _X]), np.stack([_X, _X])), {}, "leading"),
    ("attention", (_X[0], _X[0], _X[0]), {}, r"q must be \(..., seq, head_dim\)"),
    ("attention", (_Q, _Q, _Q), {"causal": 1}, "causal must be True or False"),
    ("attention", (_Q, _Q, _Q), {"algorithm": "tiled"}, "algorithm must be one of"),
    ("attention", (_Q, _Q, _Q), {"scale": -1.0}, "scale must be None"),
]


@pytest.mark.parametrize(("name", "arrays", "options", "message"), BAD, ids=[f"{b[0]}-{b[3][:30]}" for b in BAD])
def test_bad_input_is_a_value_error_naming_the_field(name, arrays, options, message) -> None:
    for backend in ("auto", "numba"):  # checked before any backend runs
        with pytest.raises(ValueError, match=message):
            OPS[name](*arrays, backend=backend, **options)


def test_backend_choice_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="unknown backend 'fortran'"):
        OPS["softmax"](_X, backend="fortran")
    with pytest.raises(ValueError, match=r"'numba' takes float32, float64 arrays, got float16"):
        OPS["softmax"](_X.astype(np.float16), backend="numba")
    with pytest.raises(ValueError, match="all arrays must be of one type"):
        OPS["bias_gelu"](_X, torch.from_numpy(_V6))
    with pytest.raises(TypeError, match=r"expected a numpy\.ndarray"):
        OPS["softmax"]([[1.0, 2.0]])
    for name, reason in OPS["softmax"].unavailable().items():
        with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run here"):
            OPS["softmax"](_X, backend=name)
        assert reason


@pytest.mark.parametrize("name", OPS)
def test_backends_and_unavailable_partition_the_implemented(name: str) -> None:
    kernel = OPS[name]
    runnable, missing = kernel.backends(), kernel.unavailable()
    assert set(runnable).isdisjoint(missing)
    assert set(runnable) | set(missing) == set(kernel.implemented)
    for backend, reason in missing.items():
        assert isinstance(reason, str) and reason.startswith("needs "), (backend, reason)
    assert {"reference", "numba", "torch"} <= set(runnable)
