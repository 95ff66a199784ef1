"""The same ops written the way NumPy code usually is: one library call per step.

Each step reads its input from memory and writes a temporary back, so an op of
k steps moves about k times the bytes a fused kernel moves. These are the
baselines the fused kernels are measured against (benchmarks/kernels.py and
modules/02_kernels/03_memory_bound.ipynb); they compute in the input's dtype.
PyTorch's eager baseline is the `torch` backend itself: its bias_gelu is an add,
then a GELU, two kernels with a temporary the size of x between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.special import erf

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_TANH_C = math.sqrt(2.0 / math.pi)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)  # read x, write a temporary
    e = np.exp(shifted)  # read it, write another
    return e / e.sum(axis=-1, keepdims=True)  # read it twice (sum, divide), write the result


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * weight + bias


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_TANH_C * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x * _SQRT_HALF))


def bias_gelu(x: np.ndarray, bias: np.ndarray, approximate: str = "none") -> np.ndarray:
    return gelu(x + bias, approximate)


UNFUSED: dict[str, Callable[..., np.ndarray]] = {
    "softmax": softmax,
    "layernorm": layernorm,
    "gelu": gelu,
    "bias_gelu": bias_gelu,
}
