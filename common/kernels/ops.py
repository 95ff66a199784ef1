"""The ops of the kernel library: their arguments, their checks, their backends.

Every backend of an op takes the same arguments and must match `reference`
within the tolerances in `tolerance()`; tests/kernels/test_op.py holds them to it.
"""

from __future__ import annotations

from typing import Any

from common.kernels.op import Op, dtype_name

GELU_APPROXIMATIONS = ("none", "tanh")
ATTENTION_ALGORITHMS = ("naive", "flash")

_FLOATS = ("float16", "bfloat16", "float32", "float64")

# |got - reference| <= atol + rtol * |reference|, per element type of the inputs.
TOLERANCES: dict[str, tuple[float, float]] = {  # dtype: (rtol, atol)
    "float64": (1e-9, 1e-12),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (2e-2, 1e-2),
}


def tolerance(dtype: str, reduction: int = 1) -> tuple[float, float]:
    """(rtol, atol) for outputs of `dtype` that sum over `reduction` terms (rounding grows like sqrt(n))."""
    rtol, atol = TOLERANCES[dtype]
    grow = max(1.0, reduction**0.5 / 8)
    return rtol * grow, atol * grow


def _floating(name: str, x: Any) -> None:
    if dtype_name(x) not in _FLOATS:
        raise ValueError(f"{name} must be a floating-point array ({', '.join(_FLOATS)}), got {dtype_name(x)}")
    if x.ndim == 0 or 0 in tuple(x.shape):
        raise ValueError(f"{name} must have at least one axis and no empty axis, got shape {tuple(x.shape)}")


def _vector_of(name: str, v: Any, n: int, of: str) -> None:
    if tuple(v.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), the last axis of {of}, got {tuple(v.shape)}")


def _approximation(approximate: str) -> None:
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")


def _check_softmax(x: Any) -> None:
    _floating("x", x)


def _check_layernorm(x: Any, weight: Any, bias: Any, eps: float = 1e-5) -> None:
    _floating("x", x)
    _vector_of("weight", weight, x.shape[-1], "x")
    _vector_of("bias", bias, x.shape[-1], "x")
    if not (isinstance(eps, int | float) and eps > 0):
        raise ValueError(f"eps must be a number > 0, got {eps!r}")


def _check_gelu(x: Any, approximate: str = "none") -> None:
    _floating("x", x)
    _approximation(approximate)


def _check_bias_gelu(x: Any, bias: Any, approximate: str = "none") -> None:
    _floating("x", x)
    _vector_of("bias", bias, x.shape[-1], "x")
    _approximation(approximate)


def _check_matmul(a: Any, b: Any) -> None:
    _floating("a", a)
    _floating("b", b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul takes 2-D a (m, k) and b (k, n), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: a is (m, k) = {tuple(a.shape)} so b must be ({a.shape[1]}, n), got {tuple(b.shape)}")


def _check_attention(
    q: Any, k: Any, v: Any, causal: bool = False, algorithm: str = "naive", scale: float | None = None
) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        _floating(name, x)
        if x.ndim < 2:
            raise ValueError(f"{name} must be (..., seq, head_dim), got shape {tuple(x.shape)}")
    if not (q.ndim == k.ndim == v.ndim) or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            f"q, k and v must share their leading (batch, head) axes, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share head_dim, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same sequence length, got {k.shape[-2]} and {v.shape[-2]}")
    if algorithm not in ATTENTION_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ATTENTION_ALGORITHMS}, got {algorithm!r}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True or False, got {causal!r}")
    if scale is not None and not (isinstance(scale, int | float) and scale > 0):
        raise ValueError(f"scale must be None (1/sqrt(head_dim)) or a number > 0, got {scale!r}")


# flops_per_element: nominal, counting an exp, an erf or a division as one FLOP. Enough to place an op on a
# roofline (about 1 FLOP per byte, far left of the ridge), not a census.
_CPU = ("numba", "torch", "reference")
_GPU = ("triton", "cupy", "torch", "numba-cuda")
_ALL = ("reference", "numba", "torch", "numba-cuda", "cupy", "triton")

softmax = Op(
    "softmax",
    _check_softmax,
    _ALL,
    _CPU,
    _GPU,
    "softmax(x) over the last axis, max-subtracted so large inputs cannot overflow.",
    flops_per_element=5,
)
layernorm = Op(
    "layernorm",
    _check_layernorm,
    _ALL,
    _CPU,
    _GPU,
    "layernorm(x, weight, bias, eps=1e-5) over the last axis (biased variance, as torch).",
    flops_per_element=8,
)
gelu = Op(
    "gelu",
    _check_gelu,
    _ALL,
    _CPU,
    _GPU,
    "gelu(x, approximate='none'): exact x * Phi(x) with erf, or the tanh approximation.",
    flops_per_element=8,
)
bias_gelu = Op(
    "bias_gelu",
    _check_bias_gelu,
    _ALL,
    _CPU,
    _GPU,
    "bias_gelu(x, bias, approximate='none') = gelu(x + bias), fused: one read and one write of x.",
    flops_per_element=9,
)
matmul = Op(
    "matmul",
    _check_matmul,
    _ALL,
    ("torch", "numba", "reference"),
    ("torch", "triton", "cupy", "numba-cuda"),
    "matmul(a, b) of 2-D arrays (m, k) @ (k, n).",
)
attention = Op(
    "attention",
    _check_attention,
    _ALL,
    ("torch", "numba", "reference"),
    ("torch", "triton", "cupy", "numba-cuda"),
    "attention(q, k, v, causal=False, algorithm='naive' | 'flash', scale=None) over (..., seq, head_dim):\n"
    "softmax(q k^T * scale) v. 'naive' builds the (seq_q, seq_k) score matrix; 'flash' streams over key\n"
    "tiles with an online softmax and needs O(seq) extra memory. causal masks key j > query i.",
)

OPS: dict[str, Op] = {op.name: op for op in (softmax, layernorm, gelu, bias_gelu, matmul, attention)}
