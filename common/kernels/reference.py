"""NumPy reference implementations: float64 inside, written for clarity, not speed.

Every other backend is tested against these. Results are returned in the
input's dtype.
"""

from __future__ import annotations

import math

import numpy as np

from common.kernels.ops import ATTENTION_ALGORITHMS

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf(x: np.ndarray) -> np.ndarray:
    # NumPy has no erf ufunc; math.erf is exact to double precision.
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(x.dtype)


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    z = x.astype(np.float64)
    mean = z.mean(axis=-1, keepdims=True)
    var = ((z - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (z - mean) / np.sqrt(var + eps) * weight.astype(np.float64) + bias.astype(np.float64)
    return y.astype(x.dtype)


def _gelu64(z: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * z * (1.0 + np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3)))
    return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    return _gelu64(x.astype(np.float64), approximate).astype(x.dtype)


def bias_gelu(x: np.ndarray, bias: np.ndarray, approximate: str = "none") -> np.ndarray:
    return _gelu64(x.astype(np.float64) + bias.astype(np.float64), approximate).astype(x.dtype)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(a.dtype)


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    algorithm: str = "naive",
    scale: float | None = None,
) -> np.ndarray:
    """Both algorithms give the same numbers; here 'flash' is the tiled loop written out in NumPy."""
    assert algorithm in ATTENTION_ALGORITHMS
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q64, k64, v64 = (t.astype(np.float64) for t in (q, k, v))
    if algorithm == "flash":
        return flash_attention(q64, k64, v64, causal, scale).astype(q.dtype)
    s = q64 @ np.swapaxes(k64, -1, -2) * scale
    if causal:
        s = np.where(causal_mask(q.shape[-2], k.shape[-2]), s, -np.inf)
    return (softmax(s) @ v64).astype(q.dtype)


def causal_mask(seq_q: int, seq_k: int) -> np.ndarray:
    """True where query i may see key j: j <= i (top-left aligned, as torch's is_causal)."""
    return np.arange(seq_k)[None, :] <= np.arange(seq_q)[:, None]


def flash_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: float, block: int = 64
) -> np.ndarray:
    """The online softmax over key tiles: running max m, running sum l, rescaled accumulator.

    Extra memory is O(seq_q * block), not O(seq_q * seq_k): the teaching version of
    what the numba, CUDA and Triton kernels do per query tile.
    """
    seq_q, seq_k = q.shape[-2], k.shape[-2]
    m = np.full((*q.shape[:-1], 1), -np.inf)
    denom = np.zeros((*q.shape[:-1], 1))
    acc = np.zeros((*q.shape[:-1], v.shape[-1]))
    for start in range(0, seq_k, block):
        kj, vj = k[..., start : start + block, :], v[..., start : start + block, :]
        s = q @ np.swapaxes(kj, -1, -2) * scale
        if causal:
            cols = np.arange(start, start + kj.shape[-2])
            s = np.where(cols[None, :] <= np.arange(seq_q)[:, None], s, -np.inf)
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
        # A row whose keys so far are all masked keeps m = -inf; exp(-inf - -inf) would be nan.
        safe = np.where(np.isneginf(m_new), 0.0, m_new)
        p = np.exp(s - safe)
        correction = np.exp(np.where(np.isneginf(m), -np.inf, m - safe))
        denom = denom * correction + p.sum(axis=-1, keepdims=True)
        acc = acc * correction + p @ vj
        m = m_new
    return acc / denom
