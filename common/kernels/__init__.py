"""Kernels: one API per op, many backends, all held to one NumPy reference.

    from common.kernels import softmax
    y = softmax(x)                      # the fastest backend here that takes x
    y = softmax(x, backend="numba")     # or a named one
    softmax.backends()                  # what can run on this machine
    softmax.unavailable()               # what cannot, and why

Importing this package imports no backend: Numba, CuPy and Triton load on
first use of a backend that needs them.
"""

from common.kernels.backends import BACKENDS, status
from common.kernels.op import Op
from common.kernels.ops import OPS, attention, bias_gelu, gelu, layernorm, matmul, softmax, tolerance

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
