"""The ops on the CPU with Numba: fused, parallel over rows, SIMD within a row.

Each op is a Python function that shapes its input into contiguous rows
(rows, n) and calls an `@njit(parallel=True, cache=True)` kernel whose `prange`
hands rows to threads. Within a row the work is fused: softmax reads x once
from memory (its max and its exp-sum passes find the row in cache) and writes
y once; layernorm takes mean and variance in one pass and normalises in a
second, again from cache; bias_gelu adds the bias inside the gelu loop instead
of writing x + bias to memory first. That makes them memory-bound: one read
and one write of x, as close to a copy as the arithmetic allows.

Row work lives in small `@njit` helpers, each compiled with the fastmath flags
that are safe for it, and LLVM inlines them into the kernel:

- the row max: no fastmath. A max that may assume "no nan" is free to return
  anything for a row with a nan, and the max subtraction is what keeps exp from
  overflowing. `row_max` vectorises it with integer compares instead.
- `_exp_shifted_sum`, `_shifted_moments`: `reassoc` (and `contract`) only. A
  float sum vectorises only if it may be reordered (several partial sums, one
  per SIMD lane), which changes rounding in the last bits and nothing else:
  nan and inf still propagate. exp itself keeps its own flags (see below).
- the normalising and scaling loops: nothing to reorder; `contract` (fused
  multiply-add) at most.

Vector math (the first section below). `math.exp` and `math.erf` compile to calls
into the C library, one element at a time: a loop that calls them cannot become
SIMD code (Numba would need Intel's SVML for vector versions, not installed
here). So for float32, exp and erf are written out as plain arithmetic (a range
reduction, a polynomial, the exponent assembled from its bits), which LLVM
vectorises like any loop body. float64 keeps the C library's functions: its
tolerance (1e-9) asks for correctly rounded results, and float64 is not what
these kernels are tuned for. float32 `exp32` is within 2 ulp (Cephes' expf
polynomial); `erf32` is Cephes' polynomial near 0 and Abramowitz & Stegun
7.1.26 (the formula ATen vectorises for torch's float32 gelu) beyond, absolute
error < 2e-7. They are compiled with
`fastmath={"contract"}` only (fused multiply-adds): reassociation could undo the
two-constant range reduction `x - n*ln2_hi - n*ln2_lo` that keeps exp accurate.
Divisions use `error_model="numpy"` (x / 0 is inf): Python's model tests every
divisor for zero to raise ZeroDivisionError, and that branch alone keeps a loop
scalar.

The vector math lives in this file, next to its callers, on purpose: Numba's
on-disk cache is keyed on the source file of the cached function only, so a
kernel cached here would keep stale inlined code after an edit to another file.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_REDUCE = {"reassoc", "contract"}  # see the module docstring: sums only
_ELEMENTS_PER_TASK = 1 << 14  # elementwise ops: one prange task per 64 KiB of float32


def _output(out: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """A fresh result array, or the caller's `out` once checked: writing into a warm buffer skips the page
    faults of fresh memory, which on large arrays cost as much as the kernel itself."""
    if out is None:
        return np.empty(x.shape, x.dtype)
    if out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"out must be a writeable C-contiguous {x.dtype} array of shape {x.shape}, "
            f"got {out.dtype} {out.shape} (contiguous={out.flags.c_contiguous}, writeable={out.flags.writeable})"
        )
    if np.shares_memory(out, x):
        raise ValueError("out must not overlap the input: the kernels read rows after writing others")
    return out


def _rows(x: np.ndarray) -> np.ndarray:
    """x as contiguous (rows, n): every kernel walks the last axis with unit stride."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


# --- vector math ---------------------------------------------------------

_F32 = np.float32
# Cephes expf: ln2 split in two so n * LN2_HI is exact, and a degree-5 polynomial on [-ln2/2, ln2/2].
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_EXP_MAX = _F32(88.72283)  # above this exp overflows float32
_EXP_MIN = _F32(-104.0)  # below this exp is 0 even as a subnormal
_E0, _E1, _E2, _E3, _E4, _E5 = (
    _F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 0.5)
)
# erf: Cephes' erff odd polynomial x * T(x^2) for |x| < 1, where 1 - (something near 1) would cancel, and
# Abramowitz & Stegun 7.1.26 beyond: erf(x) = 1 - t * P(t) * exp(-x^2), t = 1 / (1 + p x), for x >= 0.
_T6, _T5, _T4, _T3, _T2, _T1, _T0 = (
    _F32(c)
    for c in (
        7.853861353153693e-5,
        -8.010193625184903e-4,
        5.188327685732524e-3,
        -2.685381193529856e-2,
        1.128358514861418e-1,
        -3.761262582423300e-1,
        1.128379165726710,
    )
)
_ERF_P = _F32(0.3275911)
_A1, _A2, _A3, _A4, _A5 = (_F32(c) for c in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_ZERO, _HALF, _ONE, _TWO = _F32(0.0), _F32(0.5), _F32(1.0), _F32(2.0)
_INV_SQRT2 = _F32(1.0 / math.sqrt(2.0))
_INF = _F32(np.inf)


@njit(cache=True, fastmath={"contract"})
def exp32(x: np.float32) -> np.float32:
    """exp(x) in float32 arithmetic only, so a loop of it vectorises. inf, -inf and nan as the C library."""
    xc = min(max(x, _EXP_MIN), _EXP_MAX)  # keeps the integer conversion below defined
    n = np.floor(xc * _LOG2E + _HALF)
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = ((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5
    p = p * r * r + r + _ONE
    # 2**n assembled from its exponent bits, in two halves so n = 128 (and subnormal results) fit.
    ni = np.int32(n)
    h = ni >> 1
    s1 = np.int32((h + 127) << 23).view(np.float32)
    s2 = np.int32((ni - h + 127) << 23).view(np.float32)
    y = p * s1 * s2
    if x > _EXP_MAX:
        y = _INF
    if x != x:  # nan in, nan out (selects, not branches, once vectorised)
        y = x
    return y


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def erf32(x: np.float32) -> np.float32:
    """erf(x) in float32 arithmetic only (absolute error < 2e-7), so a loop of it vectorises.

    Both pieces are computed and one is selected: SIMD lanes cannot branch apart.
    """
    a = abs(x)
    z = x * x
    near = x * ((((((_T6 * z + _T5) * z + _T4) * z + _T3) * z + _T2) * z + _T1) * z + _T0)
    t = _ONE / (_ONE + _ERF_P * a)
    poly = ((((_A5 * t + _A4) * t + _A3) * t + _A2) * t + _A1) * t
    far = _ONE - poly * exp32(-z)
    far = far if x >= _ZERO else -far  # nan: far is nan already
    return near if a < _ONE else far


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def gelu_erf32(x: np.float32) -> np.float32:
    """Exact-erf gelu in float32 arithmetic only: 0.5 x (1 + erf(x / sqrt 2)), one formula for every x.

    gelu needs 1 + erf(u), never erf(u) alone, so `erf32`'s polynomial near 0 (there for erf's relative
    accuracy where erf is tiny) buys nothing: 1 + erf is close to 1 there. Abramowitz & Stegun 7.1.26 gives
    q = erfc(|u|) = P(t) exp(-u^2) for every u, and 1 + erf(u) is 2 - q for u >= 0 and q itself for u < 0,
    so the negative side is not even a cancellation. Half the arithmetic of going through `erf32`, and the
    same formula as ATen's vectorised float32 gelu.
    """
    u = x * _INV_SQRT2
    t = _ONE / (_ONE + _ERF_P * abs(u))
    q = ((((_A5 * t + _A4) * t + _A3) * t + _A2) * t + _A1) * t * exp32(-(u * u))
    s = _TWO - q if x >= _ZERO else q  # nan: q is nan already
    return _HALF * x * s


def scalar_exp(x: float) -> float:
    """exp inside @njit code: `exp32` for float32, the C library's for float64."""
    return math.exp(x)


def scalar_erf(x: float) -> float:
    """erf inside @njit code: `erf32` for float32, the C library's for float64."""
    return math.erf(x)


@overload(scalar_exp)
def _exp(x):  # pragma: no cover - resolved at compile time
    if x == types.float32:
        return lambda x: exp32(x)
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)
    return None


@overload(scalar_erf)
def _erf(x):  # pragma: no cover - resolved at compile time
    if x == types.float32:
        return lambda x: erf32(x)
    if isinstance(x, types.Float):
        return lambda x: math.erf(x)
    return None


def scalar_gelu(x: float, tanh: bool) -> float:
    """gelu inside @njit code, in the argument's own precision; `tanh` picks the approximation.

    The tanh form is computed as x * sigmoid(2u) = x / (1 + exp(-2u)), the same
    number as 0.5 x (1 + tanh(u)) without the cancellation of 1 + tanh(u) for
    negative x, and with one exp instead of a tanh.
    """
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return x / (1.0 + math.exp(-2.0 * u)) if tanh else 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _gelu_for(dtype: type) -> object:
    # Constants in the argument's own type: a Python float would promote float32 arithmetic to float64.
    half, one, minus_two = dtype(0.5), dtype(1.0), dtype(-2.0)
    k, c, inv_sqrt2 = dtype(math.sqrt(2.0 / math.pi)), dtype(0.044715), dtype(1.0 / math.sqrt(2.0))

    def impl(x, tanh):
        if tanh:
            u = k * (x + c * x * x * x)
            return x / (one + scalar_exp(minus_two * u))
        return half * x * (one + scalar_erf(x * inv_sqrt2))

    def impl32(x, tanh):
        if tanh:
            u = k * (x + c * x * x * x)
            return x / (one + scalar_exp(minus_two * u))
        return gelu_erf32(x)

    return impl32 if dtype is np.float32 else impl


@overload(scalar_gelu, jit_options={"fastmath": {"contract"}, "error_model": "numpy"})
def _gelu(x, tanh):  # pragma: no cover - resolved at compile time
    if x == types.float32:
        return _gelu_for(np.float32)
    if x == types.float64:
        return _gelu_for(np.float64)
    return None


def row_max(x: np.ndarray) -> float:
    """max of a 1-D float array inside @njit code, as a loop that vectorises (see `_max_by_bits`)."""
    return x.max()


def _max_by_bits(itype: type, ftype: type) -> object:
    # LLVM will not vectorise a float max reduction (it would have to assume no nan), but it vectorises an
    # integer one. IEEE floats order like sign-magnitude integers, so flipping the magnitude bits of negative
    # numbers gives integer keys that order exactly as the floats do (-inf < ... < -0 <= 0 < ... < inf).
    # A nan with its sign bit clear sorts above inf and wins, as in np.max; one with it set sorts below -inf
    # and loses, but a kernel that goes on to use the max (softmax: exp(x - max), summed) turns it to nan.
    nbits = np.dtype(itype).itemsize * 8
    sign, magnitude, lowest = itype(nbits - 1), itype(2 ** (nbits - 1) - 1), itype(-(2 ** (nbits - 1)))

    def impl(x):
        bits = x.view(itype)
        m = lowest
        for j in range(bits.size):
            key = bits[j] ^ ((bits[j] >> sign) & magnitude)
            m = key if key > m else m
        return itype(m ^ ((m >> sign) & magnitude)).view(ftype)

    return impl


@overload(row_max)
def _row_max(x):  # pragma: no cover - resolved at compile time
    if isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C":
        if x.dtype == types.float32:
            return _max_by_bits(np.int32, np.float32)
        if x.dtype == types.float64:
            return _max_by_bits(np.int64, np.float64)
    return None


# --- softmax ---------------------------------------------------------------


_SUM_BLOCK = 256  # softmax's exponentials summed in x's precision this many at a time, then added in float64


@njit(cache=True, fastmath=_REDUCE)
def _exp_shifted_sum(x, m, out):  # pragma: no cover - compiled
    # Two levels. A float64 accumulator inside the loop would set the vector width to that of doubles, so the
    # float32 exp would run on half-width registers (xmm on AVX2: measured 1.85 ns/element on a Zen 2 core,
    # 0.95 with the float32 block sums). Each block's sum is spread over the SIMD lanes (reassoc) and covers
    # few terms, so its rounding is a few float32 ulps of the block; the float64 total of the blocks keeps a
    # long row's sum as accurate as before.
    total = 0.0
    n = x.size
    for b0 in range(0, n, _SUM_BLOCK):
        part = x.dtype.type(0.0)
        for j in range(b0, min(n, b0 + _SUM_BLOCK)):
            e = scalar_exp(x[j] - m)
            out[j] = e
            part += e
        total += part
    return total


@njit(cache=True)
def _scale(out, factor):  # pragma: no cover - compiled
    f = out.dtype.type(factor)
    for j in range(out.size):
        out[j] *= f


@njit(parallel=True, cache=True)
def _softmax_kernel(x, out):  # pragma: no cover - compiled
    for i in prange(x.shape[0]):
        m = row_max(x[i])
        total = _exp_shifted_sum(x[i], m, out[i])
        _scale(out[i], 1.0 / total)


def softmax(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis: max pass, exp-and-sum pass writing y, scale pass on y (in cache)."""
    rows = _rows(x)
    result = _output(out, x)
    _softmax_kernel(rows, result.reshape(rows.shape))
    return result


# --- layernorm -------------------------------------------------------------


@njit(cache=True, fastmath=_REDUCE)
def _shifted_moments(x):  # pragma: no cover - compiled
    # Sums of d = x - x[0] in float64: one pass like sum/sum-of-squares, but shifted by a sample of the row so
    # that var = E[d^2] - E[d]^2 does not cancel catastrophically when |mean| >> std (Welford is as safe but
    # serial: each step depends on the last, so it cannot vectorise).
    x0 = np.float64(x[0])
    s1 = 0.0
    s2 = 0.0
    for j in range(x.size):
        d = np.float64(x[j]) - x0
        s1 += d
        s2 += d * d
    return x0, s1, s2


@njit(cache=True, fastmath={"contract"})
def _normalise(x, mean, rstd, weight, bias, out):  # pragma: no cover - compiled
    # (x - mean) in x's own precision but with mean split in two (hi + lo) so the float32 subtraction loses
    # nothing of the float64 mean: x - hi is exact when x is near the mean, which is where it matters.
    t = x.dtype.type
    hi = t(mean)
    lo = t(mean - np.float64(hi))
    r = t(rstd)
    for j in range(x.size):
        out[j] = ((x[j] - hi) - lo) * (r * weight[j]) + bias[j]


@njit(parallel=True, cache=True)
def _layernorm_kernel(x, weight, bias, eps, out):  # pragma: no cover - compiled
    n = x.shape[1]
    for i in prange(x.shape[0]):
        x0, s1, s2 = _shifted_moments(x[i])
        mean_d = s1 / n
        var = max(s2 / n - mean_d * mean_d, 0.0)
        _normalise(x[i], x0 + mean_d, 1.0 / np.sqrt(var + eps), weight, bias, out[i])


def layernorm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5, *, out: np.ndarray | None = None
) -> np.ndarray:
    """LayerNorm over the last axis: moments in one pass (float64 sums), normalise in a second, from cache."""
    rows = _rows(x)
    result = _output(out, x)
    w, b = np.ascontiguousarray(weight), np.ascontiguousarray(bias)
    _layernorm_kernel(rows, w, b, float(eps), result.reshape(rows.shape))
    return result


# --- gelu and bias_gelu ----------------------------------------------------


@njit(cache=True)
def _gelu_span(x, out, tanh):  # pragma: no cover - compiled
    # One loop per approximation, the choice made once outside: a run-time `if` inside the loop body would
    # stop it from vectorising (LLVM does not split the loop in two for us here).
    if tanh:
        for j in range(x.size):
            out[j] = scalar_gelu(x[j], True)
    else:
        for j in range(x.size):
            out[j] = scalar_gelu(x[j], False)


@njit(cache=True)
def _bias_gelu_span(x, bias, out, tanh):  # pragma: no cover - compiled
    if tanh:
        for j in range(x.size):
            out[j] = scalar_gelu(x[j] + bias[j], True)
    else:
        for j in range(x.size):
            out[j] = scalar_gelu(x[j] + bias[j], False)


@njit(parallel=True, cache=True)
def _gelu_kernel(x, tanh, out):  # pragma: no cover - compiled
    n = x.size
    for t in prange((n + _ELEMENTS_PER_TASK - 1) // _ELEMENTS_PER_TASK):
        j0, j1 = t * _ELEMENTS_PER_TASK, min(n, (t + 1) * _ELEMENTS_PER_TASK)
        _gelu_span(x[j0:j1], out[j0:j1], tanh)


@njit(parallel=True, cache=True)
def _bias_gelu_kernel(x, bias, tanh, out):  # pragma: no cover - compiled
    for i in prange(x.shape[0]):
        _bias_gelu_span(x[i], bias, out[i], tanh)


def gelu(x: np.ndarray, approximate: str = "none", *, out: np.ndarray | None = None) -> np.ndarray:
    """gelu elementwise over a flat view, split into 64 KiB tasks so even one long row uses every thread."""
    flat = np.ascontiguousarray(x).reshape(-1)
    result = _output(out, x)
    _gelu_kernel(flat, approximate == "tanh", result.reshape(-1))
    return result


def bias_gelu(
    x: np.ndarray, bias: np.ndarray, approximate: str = "none", *, out: np.ndarray | None = None
) -> np.ndarray:
    """gelu(x + bias) fused: x + bias lives only in a register, so x is read once and y written once."""
    rows = _rows(x)
    result = _output(out, x)
    _bias_gelu_kernel(rows, np.ascontiguousarray(bias), approximate == "tanh", result.reshape(rows.shape))
    return result


# --- matmul ----------------------------------------------------------------

_BM = 32  # rows of a (and out) per task
_BK = 128  # a k-slab: its b rows (128 x _BN) are reused by all _BM rows while in L2
_BN = 512  # out columns per tile: one out row segment (2 KiB of float32) stays in L1


@njit(cache=True, fastmath={"contract"})
def _axpy4(out, a0, a1, a2, a3, b0, b1, b2, b3):  # pragma: no cover - compiled
    # Four rank-1 updates in one sweep: out is loaded and stored once per four fused multiply-adds.
    # Slices, not (array, start, stop): an index that might be negative needs a wraparound check per
    # element, and that check alone keeps the loop scalar.
    for j in range(out.size):
        out[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]


@njit(cache=True, fastmath={"contract"})
def _axpy(out, a0, b0):  # pragma: no cover - compiled
    for j in range(out.size):
        out[j] += a0 * b0[j]


@njit(parallel=True, cache=True)
def _matmul_kernel(a, b, out):  # pragma: no cover - compiled
    m, k = a.shape
    n = b.shape[1]
    for ib in prange((m + _BM - 1) // _BM):
        i0, i1 = ib * _BM, min(m, (ib + 1) * _BM)
        out[i0:i1, :] = 0
        for k0 in range(0, k, _BK):
            k1 = min(k, k0 + _BK)
            for j0 in range(0, n, _BN):
                j1 = min(n, j0 + _BN)
                for i in range(i0, i1):
                    row, ai = out[i, j0:j1], a[i]  # out[i, j0:j1] and b[kk, j0:j1] are contiguous ('C') slices
                    kk = k0
                    while kk + 4 <= k1:
                        _axpy4(
                            row,
                            ai[kk],
                            ai[kk + 1],
                            ai[kk + 2],
                            ai[kk + 3],
                            b[kk, j0:j1],
                            b[kk + 1, j0:j1],
                            b[kk + 2, j0:j1],
                            b[kk + 3, j0:j1],
                        )
                        kk += 4
                    while kk < k1:
                        _axpy(row, ai[kk], b[kk, j0:j1])
                        kk += 1


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Blocked (i, k, j) loops: row blocks in parallel, the contiguous j loop in SIMD. A teaching kernel:
    MKL/oneDNN (torch) also packs tiles and keeps a register block of out, and is several times faster."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _matmul_kernel(a, b, out)
    return out


# --- attention -------------------------------------------------------------

# Naive and flash attention have their own module (and their own tests); this backend re-exports them.
from common.kernels.backends.numba_attention import attention  # noqa: E402, F401
