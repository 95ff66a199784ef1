"""Kernels: one API per op, many backends, all held to one NumPy reference.

    from common.kernels import softmax
    y = softmax(x)                      # the fastest backend here that takes x
    y = softmax(x, backend="numba")     # or a named one
    softmax.backends()                  # what can run on this machine
    softmax.unavailable()               # what cannot, and why

Importing this package imports no backend: Numba, CuPy and Triton load on
first use of a backend that needs them.

    op.py, ops.py    `Op`, one calling convention; the six ops, their checks and tolerances
    reference.py     float64 NumPy: the answer every backend is held to
    registry.py      the backends, what each takes, whether it can run here
    quant.py         int8 / int4 weight-only matmul kernels (used by `common.llm`)
    backends/        one module per backend (Numba CPU and CUDA, torch, CUDA C with CuPy, Triton)
    analysis/        what a kernel costs: roofline, SIMD in the assembly, ptxas reports, occupancy
    demos/           what only the module 02 notebooks run: unfused baselines, SIMD loops, a C++ extension
"""

from common.kernels.op import Op
from common.kernels.ops import OPS, attention, bias_gelu, gelu, layernorm, matmul, softmax, tolerance
from common.kernels.registry import BACKENDS, status

__all__ = [
    "BACKENDS",
    "OPS",
    "Op",
    "attention",
    "bias_gelu",
    "gelu",
    "layernorm",
    "matmul",
    "softmax",
    "status",
    "tolerance",
]
