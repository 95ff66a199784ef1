"""The tolerances the kernel tests hold every backend to, pinned here rather than read from the code under test.

`common.kernels.ops.tolerance` must equal these (tests/kernels/test_op.py checks it), so loosening the
library's tolerance fails a test instead of quietly loosening every test that uses it.
"""

from __future__ import annotations

# |got - reference| <= atol + rtol * |reference|, by the element type of the inputs, for outputs that sum up
# to 64 terms. Past 64 terms both grow like sqrt(terms / 64): rounding errors of a sum add up like a random walk.
PINNED: dict[str, tuple[float, float]] = {  # dtype: (rtol, atol)
    "float64": (1e-9, 1e-12),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (2e-2, 1e-2),
}


def tolerance(dtype: str, reduction: int = 1) -> tuple[float, float]:
    """(rtol, atol) for outputs of `dtype` that sum over `reduction` terms."""
    rtol, atol = PINNED[dtype]
    grow = max(1.0, (reduction / 64) ** 0.5)
    return rtol * grow, atol * grow
