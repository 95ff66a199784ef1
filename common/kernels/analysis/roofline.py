"""How much work an op must do: the bytes it cannot avoid moving and the FLOPs it must compute.

A kernel's achieved bandwidth is `min_bytes / time`: the traffic of reading each
input once and writing the output once. Memory-bound ops (softmax, layernorm,
GELU) are judged against the machine's copy bandwidth, compute-bound ones
(matmul, attention at long sequences) against its matmul FLOP/s
(`common.bench.machine_ceilings`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.kernels.ops import OPS

# The ops that do a fixed few FLOPs per element: one read and one write of x bound them at every size.
MEMORY_BOUND = tuple(name for name, op in OPS.items() if op.flops_per_element is not None)


def _nbytes(x: Any) -> int:
    return int(np.prod(tuple(x.shape))) * x.element_size() if hasattr(x, "element_size") else int(x.nbytes)


def min_bytes(op: str, *arrays: Any) -> int:
    """Bytes read (every input once) plus bytes written (the output once)."""
    if op in MEMORY_BOUND:
        return sum(_nbytes(a) for a in arrays) + _nbytes(arrays[0])
    if op == "matmul":
        a, b = arrays
        item = _nbytes(a) // max(1, int(np.prod(tuple(a.shape))))
        return _nbytes(a) + _nbytes(b) + a.shape[0] * b.shape[1] * item
    if op == "attention":
        q, k, v = arrays
        return _nbytes(q) + _nbytes(k) + _nbytes(v) + _nbytes(q) // q.shape[-1] * v.shape[-1]
    raise ValueError(f"unknown op {op!r}")


def flops(op: str, *arrays: Any, causal: bool = False) -> float:
    """Multiply-adds count as two FLOPs; a causal mask halves attention's work."""
    per_element = OPS[op].flops_per_element if op in OPS else None
    if per_element is not None:
        return float(per_element * np.prod(tuple(arrays[0].shape)))
    if op == "matmul":
        a, b = arrays
        return 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    if op == "attention":
        q, k, v = arrays
        heads = float(np.prod(tuple(q.shape[:-2])))
        work = 2.0 * heads * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return work / 2 if causal else work
    raise ValueError(f"unknown op {op!r}")


def achieved_gbs(op: str, seconds: float, *arrays: Any) -> float:
    return min_bytes(op, *arrays) / seconds / 1e9


def achieved_gflops(op: str, seconds: float, *arrays: Any, causal: bool = False) -> float:
    return flops(op, *arrays, causal=causal) / seconds / 1e9


def intensity(op: str, *arrays: Any, causal: bool = False) -> float:
    """FLOPs per byte moved at the minimum traffic: left of the ridge means memory-bound."""
    return flops(op, *arrays, causal=causal) / min_bytes(op, *arrays)


def attention_traffic(algorithm: str, heads: int, n: int, d: int, *, block_q: int = 32, itemsize: int = 4) -> int:
    """Bytes attention moves to and from main memory for `heads` heads of `n` tokens of dimension `d`, counted as
    the flash-attention paper counts HBM accesses (Dao et al. 2022, section 3.2), with nothing kept in cache
    between passes.

    naive writes the n x n scores, the softmax reads and rewrites them, `p @ v` reads them: 4 n^2 per head, on
    top of reading q, k, v and writing the output (4 n d). flash never stores scores; a block of `block_q` query
    rows reads all of k and v, so k and v are read n / block_q times: 2 n d (q, out) + 2 n d ceil(n / block_q).
    Both grow as n^2; flash's factor is 2 d / block_q against naive's 4, so flash moves fewer bytes only when its
    query tile is more than d / 2 rows, which is what a larger on-chip memory buys (the paper's Theta(N^2 d^2 / M)).
    """
    if algorithm not in ("naive", "flash"):
        raise ValueError(f"algorithm must be 'naive' or 'flash', got {algorithm!r}")
    for name, value in (("heads", heads), ("n", n), ("d", d), ("block_q", block_q), ("itemsize", itemsize)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if algorithm == "naive":
        return heads * (4 * n * d + 4 * n * n) * itemsize
    return heads * (2 * n * d + 2 * n * d * -(-n // block_q)) * itemsize
