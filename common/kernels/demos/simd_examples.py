"""Small loops that show when LLVM can vectorise and when it cannot.

- `multiply_add`: every iteration is independent: SIMD.
- `recurrence`: each step needs the one before (a loop-carried dependency): no
  SIMD, whatever the flags, because the lanes would have nothing to do.
- `total` vs `total_reassociated`: a float sum carries a dependency too, but one
  that reordering can break: with `fastmath={"reassoc"}` LLVM keeps one partial
  sum per lane and adds them at the end. Without it, it may not: float addition
  is not associative, and reordering changes the last bits of the result.

Inspect them with `common.kernels.analysis.simd`. Compilation is lazy: call once first.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def multiply_add(a: np.ndarray, b: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """out[i] = a[i] * b[i] + c[i]: independent iterations."""
    for i in range(out.size):
        out[i] = a[i] * b[i] + c[i]


@njit(cache=True)
def recurrence(x: np.ndarray, a: float, b: np.ndarray) -> None:  # pragma: no cover
    """x[i] = x[i - 1] * a + b[i]: a first-order linear recurrence (a scan), serial by nature."""
    for i in range(1, x.size):
        x[i] = x[i - 1] * a + b[i]


@njit(cache=True)
def total(x: np.ndarray) -> float:  # pragma: no cover
    """Sum in strict order: one add at a time, each waiting for the last."""
    s = 0.0
    for i in range(x.size):
        s += x[i]
    return s


@njit(cache=True, fastmath={"reassoc"})
def total_reassociated(x: np.ndarray) -> float:  # pragma: no cover
    """The same sum, allowed to reorder: partial sums per SIMD lane."""
    s = 0.0
    for i in range(x.size):
        s += x[i]
    return s
