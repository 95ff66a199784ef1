"""Attention on the CPU with Numba: the naive algorithm and flash (tiled, online softmax).

Both kernels run the same inner loops (a dot product per score, an axpy per
value row), so what separates them is only what they keep in memory:

- naive writes the whole (seq_q, seq_k) score matrix of every (batch, head),
  then takes its softmax, then multiplies by v: three passes over N² numbers;
- flash gives each worker one block of queries at a time and streams over key
  tiles, keeping a running max m, running sum l and a rescaled accumulator per
  query row: extra memory O(block_q * head_dim) per worker, whatever N is.

Every buffer the kernels write is allocated here, in Python, with NumPy and
passed in (see `workspace`), so the extra memory is exactly what
`workspace_bytes` says and `tracemalloc` (common.bench.measure_memory) sees it:
an `np.empty` inside `@njit` would go through Numba's own allocator, which
tracemalloc does not see.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from common.kernels.ops import ATTENTION_ALGORITHMS

# Let LLVM reassociate and fuse float sums so the dot products vectorise. Not
# "fast": that would also assume no infinities, and the running max starts at -inf.
_FASTMATH = {"reassoc", "contract"}

BLOCK_Q = 32  # query rows a worker keeps an accumulator for
BLOCK_K = 64  # keys per tile: the k and v tiles (BLOCK_K x head_dim) stay in L1 across the block's rows


@njit(cache=True, fastmath=_FASTMATH)
def online_softmax_update(s: np.ndarray, n: int, m: float, l: float) -> tuple[float, float, float]:  # noqa: E741
    """One step of the online softmax, shared by the flash kernel and `online_softmax_trace`.

    `s[:n]` are the next scores of one row; (m, l) the running max and sum of
    exp(score - m) over the scores before them. Replaces `s[:n]` by
    exp(s - m_new) and returns (m_new, l_new, correction): whatever was summed
    against the old max must be multiplied by correction = exp(m - m_new).
    """
    m_new = m
    for c in range(n):
        m_new = max(m_new, s[c])
    correction = math.exp(m - m_new)  # m = -inf (nothing seen yet) gives 0, not nan: m_new is finite
    total = s.dtype.type(0)
    for c in range(n):
        p = math.exp(s[c] - m_new)
        s[c] = p
        total += p
    return m_new, l * correction + total, correction


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _naive_kernel(q, k, v, out, causal, scale, s):  # pragma: no cover - compiled
    bh, seq_q, d = q.shape
    seq_k, dv = k.shape[1], v.shape[2]
    zero = q.dtype.type(0)  # sums in the input's precision: float32 vectors are twice as wide as float64
    # Pass 1: every score, written to the (bh, seq_q, seq_k) matrix s.
    for row in prange(bh * seq_q):
        b, i = row // seq_q, row % seq_q
        n = min(seq_k, i + 1) if causal else seq_k  # keys j <= i only; masked scores are never computed
        for j in range(n):
            dot = zero
            for t in range(d):
                dot += q[b, i, t] * k[b, j, t]
            s[b, i, j] = dot * scale
    # Pass 2: softmax of each row, in place.
    for row in prange(bh * seq_q):
        b, i = row // seq_q, row % seq_q
        n = min(seq_k, i + 1) if causal else seq_k
        top = s[b, i, 0]
        for j in range(1, n):
            top = max(top, s[b, i, j])
        total = zero
        for j in range(n):
            p = math.exp(s[b, i, j] - top)
            s[b, i, j] = p
            total += p
        for j in range(n):
            s[b, i, j] /= total
    # Pass 3: out = s @ v.
    for row in prange(bh * seq_q):
        b, i = row // seq_q, row % seq_q
        n = min(seq_k, i + 1) if causal else seq_k
        for t in range(dv):
            out[b, i, t] = 0.0
        for j in range(n):
            p = s[b, i, j]
            for t in range(dv):
                out[b, i, t] += p * v[b, j, t]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _flash_kernel(q, k, v, out, causal, scale, block_q, block_k, s_ws, acc_ws, m_ws, l_ws):  # pragma: no cover
    bh, seq_q, d = q.shape
    seq_k, dv = k.shape[1], v.shape[2]
    q_blocks = (seq_q + block_q - 1) // block_q
    tasks = bh * q_blocks
    workers = s_ws.shape[0]
    zero = q.dtype.type(0)
    # One iteration per worker, each with its own workspace row; tasks are dealt
    # round-robin, which also balances causal blocks (later blocks see more keys).
    for w in prange(workers):
        s, acc, m, l = s_ws[w], acc_ws[w], m_ws[w], l_ws[w]  # noqa: E741
        for task in range(w, tasks, workers):
            b, i0 = task // q_blocks, (task % q_blocks) * block_q
            rows = min(block_q, seq_q - i0)
            for r in range(rows):
                m[r] = -np.inf
                l[r] = 0.0
                for t in range(dv):
                    acc[r, t] = 0.0
            # Causal: no query of this block sees a key past its last row, so those tiles are skipped whole.
            k_end = min(seq_k, i0 + rows) if causal else seq_k
            for j0 in range(0, k_end, block_k):
                cols = min(block_k, k_end - j0)
                for r in range(rows):
                    i = i0 + r
                    n = min(cols, i + 1 - j0) if causal else cols  # keys of this tile that row i sees
                    if n <= 0:
                        continue
                    for c in range(n):
                        dot = zero
                        for t in range(d):
                            dot += q[b, i, t] * k[b, j0 + c, t]
                        s[c] = dot * scale
                    m[r], l[r], correction = online_softmax_update(s, n, m[r], l[r])
                    for t in range(dv):
                        acc[r, t] *= correction
                    for c in range(n):
                        p = s[c]
                        for t in range(dv):
                            acc[r, t] += p * v[b, j0 + c, t]
            for r in range(rows):
                inv = 1.0 / l[r]
                for t in range(dv):
                    out[b, i0 + r, t] = acc[r, t] * inv


def workers_for(tasks: int) -> int:
    """How many flash workspaces to allocate: one per Numba thread, no more than there are tasks."""
    return max(1, min(numba.get_num_threads(), tasks))


def workspace(
    algorithm: str,
    batch: int,
    seq_q: int,
    seq_k: int,
    head_dim_v: int,
    dtype: np.dtype | type = np.float32,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
) -> tuple[np.ndarray, ...]:
    """The buffers a kernel writes besides its output: all of its extra memory.

    naive: the score matrix, batch * seq_q * seq_k numbers. flash: per worker, one
    row of scores (block_k), the accumulator (block_q x head_dim_v) and m, l
    (block_q each), independent of the sequence lengths.
    """
    if algorithm == "naive":
        return (np.empty((batch, seq_q, seq_k), dtype),)
    if algorithm == "flash":
        w = workers_for(batch * -(-seq_q // block_q))
        return (
            np.empty((w, block_k), dtype),
            np.empty((w, block_q, head_dim_v), dtype),
            np.empty((w, block_q), dtype),
            np.empty((w, block_q), dtype),
        )
    raise ValueError(f"algorithm must be one of {ATTENTION_ALGORITHMS}, got {algorithm!r}")


def workspace_bytes(
    algorithm: str,
    batch: int,
    seq_q: int,
    seq_k: int,
    head_dim_v: int,
    dtype: np.dtype | type = np.float32,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
) -> int:
    """Bytes of extra memory `attention` allocates for these sizes (see `workspace`), without allocating it."""
    item = np.dtype(dtype).itemsize
    if algorithm == "naive":
        return batch * seq_q * seq_k * item
    if algorithm == "flash":
        w = workers_for(batch * -(-seq_q // block_q))
        return w * (block_k + block_q * head_dim_v + 2 * block_q) * item
    raise ValueError(f"algorithm must be one of {ATTENTION_ALGORITHMS}, got {algorithm!r}")


def _check(q: np.ndarray, k: np.ndarray, v: np.ndarray, block_q: int, block_k: int) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name} must be a float32 or float64 NumPy array, got {getattr(x, 'dtype', type(x))}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if min(q.ndim, k.ndim, v.ndim) < 2 or 0 in (*q.shape, *k.shape, *v.shape):
        raise ValueError(f"q, k and v must be non-empty (..., seq, head_dim), got {q.shape}, {k.shape}, {v.shape}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]) or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"shapes must be q (..., seq_q, d), k (..., seq_k, d), v (..., seq_k, d_v), got {q.shape}, {k.shape}, "
            f"{v.shape}"
        )
    if not (isinstance(block_q, int) and isinstance(block_k, int) and block_q >= 1 and block_k >= 1):
        raise ValueError(f"block_q and block_k must be positive ints, got {block_q!r} and {block_k!r}")


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    algorithm: str = "naive",
    scale: float | None = None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
) -> np.ndarray:
    """softmax(q k^T * scale) v over (..., seq, head_dim) float32/float64 arrays, in their dtype.

    'naive' materialises the score matrix; 'flash' streams key tiles of
    `block_k` for query blocks of `block_q` (the tile sizes change only speed,
    never the result beyond rounding). causal: query i sees keys j <= i.
    """
    _check(q, k, v, block_q, block_k)
    if algorithm not in ATTENTION_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ATTENTION_ALGORITHMS}, got {algorithm!r}")
    seq_q, d = q.shape[-2:]
    seq_k, dv = v.shape[-2:]
    scale = q.dtype.type(1.0 / math.sqrt(d) if scale is None else scale)
    # (..., seq, d) -> (batch*heads, seq, d): a view when the input is C-contiguous.
    q3, k3, v3 = (np.ascontiguousarray(x.reshape(-1, *x.shape[-2:])) for x in (q, k, v))
    batch = q3.shape[0]
    out = np.empty((batch, seq_q, dv), q.dtype)
    buffers = workspace(algorithm, batch, seq_q, seq_k, dv, q.dtype, block_q, block_k)
    if algorithm == "naive":
        _naive_kernel(q3, k3, v3, out, bool(causal), scale, *buffers)
    else:
        _flash_kernel(q3, k3, v3, out, bool(causal), scale, block_q, block_k, *buffers)
    return out.reshape(*q.shape[:-1], dv)


def online_softmax_trace(x: np.ndarray, block: int) -> tuple[list[dict[str, float | str]], np.ndarray]:
    """The online softmax of one row, `block` scores at a time, step by step.

    Returns one record per block (its max, the running max m, the correction
    applied to the old sum, the running sum l) and the final softmax
    exp(x - m) / l. It runs `online_softmax_update`, the very step the flash
    kernel takes for each row and key tile.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or block < 1:
        raise ValueError(f"need a non-empty 1-D row and block >= 1, got shape {x.shape} and block {block}")
    m, l = -math.inf, 0.0  # noqa: E741
    steps: list[dict[str, float | str]] = []
    for start in range(0, x.size, block):
        tile = x[start : start + block].copy()
        m, l, correction = online_softmax_update(tile, tile.size, m, l)  # noqa: E741
        steps.append(
            {
                "keys": f"{start}-{start + tile.size - 1}",
                "block max": float(x[start : start + block].max()),
                "running max m": m,
                "correction exp(m_old - m)": correction,
                "running sum l": l,
            }
        )
    return steps, np.exp(x - m) / l
