"""Weight-only quantisation kernels on the CPU with Numba: int8 per output channel, int4 in groups.

Why weight-only: decoding one token multiplies a few activation rows by every weight matrix, so its
time is the time to read the weights (a matrix-vector product does 2 FLOPs per weight it reads). Storing
weights in 8 or 4 bits reads 4 or 8 times fewer bytes than float32; the activations stay float32, and
each weight is widened to float32 in registers, inside the dot product, never in memory.

- int8: w ~ q * scale[n], q in [-127, 127], one scale per output row (symmetric, absmax / 127).
- int4: w ~ q * scale[n, g], q in [-8, 7], one scale per `group` consecutive inputs of a row (absmax / 7,
  so -8 is unused: symmetric), stored as q + 8, two per byte: byte j of a group holds input j in its low
  nibble and input j + group/2 in its high one, so the kernel reads both halves of the activations
  contiguously and the loop vectorises.

The kernels parallelise over output rows (`prange`) and vectorise the dot product along the inputs.
They are for few rows of activations (decoding); for many (prefill) the work is compute-bound and a
dequantised matmul is faster, which `common.llm.quantize` does. `tests/kernels/test_quant.py` holds
both kernels to a NumPy reference and the int8 one to torch's `_weight_int8pack_mm`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

INT4_GROUPS = (32, 64, 128)


def _check_weight(w: np.ndarray) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise ValueError(f"a weight must be a 2-D NumPy array (out_features, in_features), got {type(w).__name__}")
    return np.ascontiguousarray(w, dtype=np.float32)


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 (n, k), scale float32 (n,)): symmetric, one scale per output row."""
    w = _check_weight(w)
    scale = np.abs(w).max(axis=1) / 127
    scale[scale == 0] = 1.0  # an all-zero row: any scale gives zeros
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None]


def quantize_int4(w: np.ndarray, group: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 (n, k / 2), scales float32 (n, k / group)): symmetric int4 in groups of `group` inputs."""
    w = _check_weight(w)
    n, k = w.shape
    if group not in INT4_GROUPS or k % group:
        raise ValueError(f"group must be one of {INT4_GROUPS} and divide in_features ({k}), got {group}")
    groups = w.reshape(n, k // group, group)
    scale = np.abs(groups).max(axis=2) / 7
    scale[scale == 0] = 1.0
    q = (np.clip(np.rint(groups / scale[..., None]), -8, 7).astype(np.int8) + 8).astype(np.uint8)
    half = group // 2  # byte j of a group: input j in the low nibble, input j + group/2 in the high one
    packed = (q[:, :, :half] | (q[:, :, half:] << 4)).reshape(n, k // 2)
    return packed, scale.astype(np.float32)


def dequantize_int4(packed: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    n, half = packed.shape[0], group // 2
    by_group = packed.reshape(n, -1, half)
    q = np.concatenate([(by_group & 0x0F), (by_group >> 4)], axis=2).astype(np.float32) - 8
    return (q * scale[..., None]).reshape(n, -1)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _int8_kernel(x, q, scale, out):  # pragma: no cover - compiled
    rows, k = x.shape
    for n in prange(q.shape[0]):
        for b in range(rows):
            acc = np.float32(0.0)
            for i in range(k):
                acc += x[b, i] * np.float32(q[n, i])
            out[b, n] = acc * scale[n]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _int4_kernel(x, packed, scale, group, out):  # pragma: no cover - compiled
    rows, k = x.shape
    half = group // 2
    for n in prange(packed.shape[0]):
        for b in range(rows):
            total = np.float32(0.0)
            for g in range(k // group):
                xs = x[b, g * group : (g + 1) * group]
                ps = packed[n, g * half : (g + 1) * half]
                acc = np.float32(0.0)
                for j in range(half):  # both halves of the group read contiguously
                    v = np.int32(ps[j])
                    acc += xs[j] * np.float32((v & 15) - 8) + xs[half + j] * np.float32((v >> 4) - 8)
                total += acc * scale[n, g]
            out[b, n] = total


def _activations(x: np.ndarray, k: int) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"activations must be (rows, {k}), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def linear_int8(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x (rows, k) @ dequantised(q).T -> (rows, n), reading int8 weights."""
    x = _activations(x, q.shape[1])
    out = np.empty((x.shape[0], q.shape[0]), dtype=np.float32)
    _int8_kernel(x, q, scale, out)
    return out


def linear_int4(x: np.ndarray, packed: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    """x (rows, k) @ dequantised(packed).T -> (rows, n), reading packed int4 weights."""
    x = _activations(x, packed.shape[1] * 2)
    out = np.empty((x.shape[0], packed.shape[0]), dtype=np.float32)
    _int4_kernel(x, packed, scale, group, out)
    return out
