# mypy: no-check-untyped-defs
# The kernels are unannotated CUDA Python that Numba compiles: numba types its device API (cuda.grid,
# cuda.threadIdx.x, cuda.shared.array) as its compiler's hooks, not as the ints and arrays a kernel sees, so
# mypy checks the annotated host functions only.
"""Numba CUDA kernels: the CUDA programming model written in Python.

Each kernel is one `@cuda.jit` function launched as `kernel[blocks, threads](...)`.
The op functions (softmax, layernorm, gelu, bias_gelu, matmul, attention) take
and return NumPy float32 arrays: they copy to the device, launch, and copy back,
so the same code runs on a GPU and, without one, on Numba's simulator
(`NUMBA_ENABLE_CUDASIM=1`, set before numba is imported), which runs every
thread of a block as a Python thread: correct, very slow, good for learning.

The kernels keep every value in float32 (constants included): one float64
literal would turn the arithmetic into double precision, which consumer GPUs
run up to 64 times slower.

Kernel names match the CUDA C sources in `cuda/*.cu`, so resource reports
(`common.kernels.analysis.cuda_build`) line up kernel by kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from common.kernels.ops import ATTENTION_ALGORITHMS

MAX_THREADS = 256  # per block for the row kernels: the size of their shared scratch arrays
ELEMENTWISE_THREADS = 128  # per block for the elementwise kernels
MAX_BLOCKS = 1024  # elementwise grids stop here; grid-stride loops cover the rest
TILE = 16  # matmul tile edge: a block of TILE x TILE threads computes a TILE x TILE tile of C
FLASH_BLOCK = 32  # flash attention: queries per block (one per thread) and keys per staged tile
FLASH_MAX_HEAD_DIM = 128  # the shared K/V tiles are sized for this head_dim

_NEG_INF = float32(-math.inf)
_ZERO = float32(0.0)
_ONE = float32(1.0)
_HALF = float32(0.5)
_INV_SQRT2 = float32(1.0 / math.sqrt(2.0))
_SQRT_2_OVER_PI = float32(math.sqrt(2.0 / math.pi))
_GELU_CUBIC = float32(0.044715)


# --- the programming model: indices, vector add, block reduction ----------------------------------------


@cuda.jit
def thread_indices(out):
    """Teaching kernel: each thread writes (blockIdx.x, threadIdx.x, blockDim.x, cuda.grid(1)) to its row."""
    i = cuda.grid(1)  # = blockIdx.x * blockDim.x + threadIdx.x
    if i < out.shape[0]:
        out[i, 0] = cuda.blockIdx.x
        out[i, 1] = cuda.threadIdx.x
        out[i, 2] = cuda.blockDim.x
        out[i, 3] = i


@cuda.jit
def vector_add(a, b, out):
    """out[i] = a[i] + b[i], one element per thread; the bounds check covers the last, partial block."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = a[i] + b[i]


@cuda.jit
def block_sum(x, partial):
    """partial[block] = the sum of the block's slice of x: a tree reduction in shared memory.

    Each step halves the active threads; the barrier after each step makes sure
    every write of this step is visible before any thread reads it in the next.
    """
    buf = cuda.shared.array(MAX_THREADS, float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    buf[t] = x[i] if i < x.shape[0] else _ZERO
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()
        stride //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = buf[0]


@cuda.jit
def block_sum_racy(x, partial):
    """TEACHING EXAMPLE WITH A DELIBERATE BUG: `block_sum` without its barriers.

    A thread may read buf[t + stride] before the thread that owns it has
    written it (or has added its own partner into it), so the sum depends on
    how threads happen to be scheduled. Never use it; notebook 02 measures it.
    """
    buf = cuda.shared.array(MAX_THREADS, float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    buf[t] = x[i] if i < x.shape[0] else _ZERO
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            buf[t] += buf[t + stride]
        stride //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = buf[0]


# --- reductions across a block, shared by the row kernels -----------------------------------------------


@cuda.jit(device=True)
def _larger(a, b):
    # Not the builtin max(): Numba 0.68 compiles it for CUDA through a varargs overload that fails to build.
    return a if a > b else b


@cuda.jit(device=True)
def _block_max(buf):
    """Max of buf[0:blockDim.x] (each thread has written its slot); every thread gets the answer."""
    t = cuda.threadIdx.x
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            buf[t] = _larger(buf[t], buf[t + stride])
        cuda.syncthreads()
        stride //= 2
    result = buf[0]
    cuda.syncthreads()  # all threads have read buf[0] before anyone reuses buf
    return result


@cuda.jit(device=True)
def _block_sum(buf):
    """Sum of buf[0:blockDim.x] (each thread has written its slot); every thread gets the answer."""
    t = cuda.threadIdx.x
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()
        stride //= 2
    result = buf[0]
    cuda.syncthreads()
    return result


@cuda.jit
def softmax_rows(x, out):
    """One block per row: max and sum by shared-memory reductions, then one pass to write.

    Threads stride over the row (thread t takes columns t, t + blockDim, ...),
    so neighbouring threads read neighbouring addresses: coalesced loads.
    """
    buf = cuda.shared.array(MAX_THREADS, float32)
    row = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n = x.shape[1]
    m = _NEG_INF
    for j in range(t, n, cuda.blockDim.x):
        m = _larger(m, x[row, j])
    buf[t] = m
    m = _block_max(buf)
    s = _ZERO
    for j in range(t, n, cuda.blockDim.x):
        s += math.exp(x[row, j] - m)
    buf[t] = s
    inv = _ONE / _block_sum(buf)
    for j in range(t, n, cuda.blockDim.x):
        out[row, j] = math.exp(x[row, j] - m) * inv


@cuda.jit
def layernorm_rows(x, weight, bias, out, eps):
    """One block per row: the mean, then the variance around it (two passes: stable), then scale and shift."""
    buf = cuda.shared.array(MAX_THREADS, float32)
    row = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n = x.shape[1]
    s = _ZERO
    for j in range(t, n, cuda.blockDim.x):
        s += x[row, j]
    buf[t] = s
    inv_n = _ONE / float32(n)  # float32(n): dividing by the int n would promote the math to float64
    mean = _block_sum(buf) * inv_n
    s = _ZERO
    for j in range(t, n, cuda.blockDim.x):
        d = x[row, j] - mean
        s += d * d
    buf[t] = s
    rstd = _ONE / math.sqrt(_block_sum(buf) * inv_n + eps)
    for j in range(t, n, cuda.blockDim.x):
        out[row, j] = (x[row, j] - mean) * rstd * weight[j] + bias[j]


# --- elementwise ----------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _gelu(z, use_tanh):
    if use_tanh:
        return _HALF * z * (_ONE + math.tanh(_SQRT_2_OVER_PI * (z + _GELU_CUBIC * z * z * z)))
    return _HALF * z * (_ONE + math.erf(z * _INV_SQRT2))


@cuda.jit
def gelu_elementwise(x, out, use_tanh):
    """out = gelu(x) over a flat array; a grid-stride loop lets any grid size cover any length."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        out[i] = _gelu(x[i], use_tanh)


@cuda.jit
def bias_gelu_elementwise(x, bias, out, use_tanh):
    """out = gelu(x + bias) fused: x is read once and written once, x + bias never reaches memory."""
    n = bias.shape[0]
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        out[i] = _gelu(x[i] + bias[i % n], use_tanh)


# --- matmul ---------------------------------------------------------------------------------------------


@cuda.jit
def matmul_tiled(a, b, c):
    """c[z] = a[z] @ b[z] with TILE x TILE tiles of a and b staged in shared memory.

    Each element of a and b is read from global memory once per tile instead of
    once per output element: TILE times less traffic. Two barriers per step:
    the tile must be fully loaded before anyone computes, and fully used before
    anyone overwrites it with the next one. blockIdx.z picks the matrix of a batch.
    """
    sa = cuda.shared.array((TILE, TILE), float32)
    sb = cuda.shared.array((TILE, TILE), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    z = cuda.blockIdx.z
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    m = a.shape[1]
    k = a.shape[2]
    n = b.shape[2]
    acc = _ZERO
    for start in range(0, k, TILE):
        sa[ty, tx] = a[z, row, start + tx] if row < m and start + tx < k else _ZERO
        sb[ty, tx] = b[z, start + ty, col] if start + ty < k and col < n else _ZERO
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[ty, kk] * sb[kk, tx]
        cuda.syncthreads()
    if row < m and col < n:
        c[z, row, col] = acc


# --- attention ------------------------------------------------------------------------------------------


@cuda.jit
def attention_naive(q, k, v, scores, out, scale, causal):
    """One thread per query row; the whole (seq_q, seq_k) score matrix goes through global memory.

    q, k, v, out are (batch*heads, seq, head_dim); scores is (batch*heads, seq_q, seq_k) scratch.
    """
    r = cuda.grid(1)
    seq_q = q.shape[1]
    if r >= q.shape[0] * seq_q:
        return
    bh = r // seq_q
    i = r % seq_q
    seq_k = k.shape[1]
    d = q.shape[2]
    last = i + 1 if causal and i + 1 < seq_k else seq_k  # keys j <= i only, when causal
    m = _NEG_INF
    for j in range(last):
        s = _ZERO
        for c in range(d):
            s += q[bh, i, c] * k[bh, j, c]
        s *= scale
        scores[bh, i, j] = s
        m = _larger(m, s)
    total = _ZERO
    for j in range(last):
        p = math.exp(scores[bh, i, j] - m)
        scores[bh, i, j] = p
        total += p
    for c in range(v.shape[2]):
        acc = _ZERO
        for j in range(last):
            acc += scores[bh, i, j] * v[bh, j, c]
        out[bh, i, c] = acc / total


@cuda.jit
def flash_attention_forward(q, k, v, out, scale, causal):
    """One block per (batch*head, tile of FLASH_BLOCK queries), one thread per query.

    The block walks over key tiles: all its threads copy a FLASH_BLOCK x head_dim
    tile of K and V into shared memory together (coalesced: consecutive threads,
    consecutive addresses), then each thread updates its own row's online
    softmax: running max m, running sum l and accumulator acc, rescaled by
    exp(m_old - m_new) whenever the max grows. The score matrix never exists.
    """
    k_tile = cuda.shared.array((FLASH_BLOCK, FLASH_MAX_HEAD_DIM), float32)
    v_tile = cuda.shared.array((FLASH_BLOCK, FLASH_MAX_HEAD_DIM), float32)
    q_row = cuda.local.array(FLASH_MAX_HEAD_DIM, float32)
    acc = cuda.local.array(FLASH_MAX_HEAD_DIM, float32)
    p = cuda.local.array(FLASH_BLOCK, float32)
    bh = cuda.blockIdx.x
    t = cuda.threadIdx.x
    q_start = cuda.blockIdx.y * FLASH_BLOCK
    i = q_start + t
    seq_q = q.shape[1]
    seq_k = k.shape[1]
    d = q.shape[2]
    dv = v.shape[2]
    active = i < seq_q
    for c in range(d):
        q_row[c] = q[bh, i, c] * scale if active else _ZERO
    for c in range(dv):
        acc[c] = _ZERO
    m = _NEG_INF
    denom = _ZERO
    # Causal: no query of this block sees a key past its last query.
    k_end = q_start + FLASH_BLOCK if causal and q_start + FLASH_BLOCK < seq_k else seq_k
    for k_start in range(0, k_end, FLASH_BLOCK):
        for e in range(t, FLASH_BLOCK * d, FLASH_BLOCK):
            r = e // d
            c = e % d
            k_tile[r, c] = k[bh, k_start + r, c] if k_start + r < seq_k else _ZERO
        for e in range(t, FLASH_BLOCK * dv, FLASH_BLOCK):
            r = e // dv
            c = e % dv
            v_tile[r, c] = v[bh, k_start + r, c] if k_start + r < seq_k else _ZERO
        cuda.syncthreads()
        if active:
            tile_max = _NEG_INF
            for j in range(FLASH_BLOCK):
                key = k_start + j
                s = _NEG_INF
                if key < seq_k and (not causal or key <= i):
                    s = _ZERO
                    for c in range(d):
                        s += q_row[c] * k_tile[j, c]
                p[j] = s
                tile_max = _larger(tile_max, s)
            if tile_max > _NEG_INF:  # else every key of this tile is masked for this row
                m_new = _larger(m, tile_max)
                correction = math.exp(m - m_new)  # exp(-inf) = 0 on the first visible tile
                denom *= correction
                for c in range(dv):
                    acc[c] *= correction
                for j in range(FLASH_BLOCK):
                    w = math.exp(p[j] - m_new)  # masked keys: exp(-inf) = 0
                    denom += w
                    for c in range(dv):
                        acc[c] += w * v_tile[j, c]
                m = m_new
        cuda.syncthreads()  # everyone is done with this tile before it is overwritten
    if active:
        inv = _ONE / denom
        for c in range(dv):
            out[bh, i, c] = acc[c] * inv


# --- host side: launch configuration and the op functions ----------------------------------------------


def row_threads(n: int) -> int:
    """Threads per block for a row of n: a power of two (the tree reductions need one), 32 to MAX_THREADS."""
    return max(32, min(MAX_THREADS, 1 << max(0, n - 1).bit_length()))


def _grid_1d(n: int, threads: int) -> int:
    return max(1, min(MAX_BLOCKS, math.ceil(n / threads)))


def _float32(x: np.ndarray) -> np.ndarray:
    if x.dtype != np.float32:
        raise TypeError(f"numba-cuda kernels take float32 arrays, got {x.dtype}")
    return np.ascontiguousarray(x)


def _rows(x: np.ndarray) -> np.ndarray:
    x = _float32(x)
    return x.reshape(-1, x.shape[-1])


def thread_coordinates(blocks: int, threads: int) -> np.ndarray:
    """Launch `thread_indices` and return one row per thread: block, thread, block size, global index."""
    out = cuda.device_array((blocks * threads, 4), np.int32)
    thread_indices[blocks, threads](out)
    return out.copy_to_host()


def add_vectors(a: np.ndarray, b: np.ndarray, threads: int = ELEMENTWISE_THREADS) -> np.ndarray:
    """a + b by `vector_add`: one thread per element, ceil(n / threads) blocks."""
    a, b = _float32(a), _float32(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"add_vectors takes two 1-D arrays of one length, got {a.shape} and {b.shape}")
    out = cuda.device_array_like(a)
    vector_add[math.ceil(a.size / threads), threads](cuda.to_device(a), cuda.to_device(b), out)
    return out.copy_to_host()


def sum_vector(x: np.ndarray, threads: int = MAX_THREADS, racy: bool = False) -> float:
    """Sum of a 1-D array: `block_sum` launches until one partial sum is left.

    racy=True runs the teaching kernel `block_sum_racy` (no barriers) instead: its answer is not to be trusted.
    """
    if threads < 1 or threads > MAX_THREADS or threads & (threads - 1):
        raise ValueError(f"threads must be a power of two from 1 to {MAX_THREADS}, got {threads}")
    kernel = block_sum_racy if racy else block_sum
    values = cuda.to_device(_float32(x).reshape(-1))
    while values.shape[0] > 1:
        partial = cuda.device_array(math.ceil(values.shape[0] / threads), np.float32)
        kernel[partial.shape[0], threads](values, partial)
        values = partial
    return float(values.copy_to_host()[0])


def softmax(x: np.ndarray) -> np.ndarray:
    rows = _rows(x)
    out = cuda.device_array_like(rows)
    softmax_rows[rows.shape[0], row_threads(rows.shape[1])](cuda.to_device(rows), out)
    return out.copy_to_host().reshape(x.shape)


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    rows = _rows(x)
    out = cuda.device_array_like(rows)
    layernorm_rows[rows.shape[0], row_threads(rows.shape[1])](
        cuda.to_device(rows), cuda.to_device(_float32(weight)), cuda.to_device(_float32(bias)), out, np.float32(eps)
    )
    return out.copy_to_host().reshape(x.shape)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    flat = _float32(x).reshape(-1)
    out = cuda.device_array_like(flat)
    gelu_elementwise[_grid_1d(flat.size, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS](
        cuda.to_device(flat), out, approximate == "tanh"
    )
    return out.copy_to_host().reshape(x.shape)


def bias_gelu(x: np.ndarray, bias: np.ndarray, approximate: str = "none") -> np.ndarray:
    flat = _float32(x).reshape(-1)
    out = cuda.device_array_like(flat)
    bias_gelu_elementwise[_grid_1d(flat.size, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS](
        cuda.to_device(flat), cuda.to_device(_float32(bias)), out, approximate == "tanh"
    )
    return out.copy_to_host().reshape(x.shape)


def _bmm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(batch, m, k) @ (batch, k, n) by `matmul_tiled`: a grid of (n/TILE, m/TILE, batch) blocks."""
    batch, m, _ = a.shape
    n = b.shape[2]
    c = cuda.device_array((batch, m, n), np.float32)
    grid = (math.ceil(n / TILE), math.ceil(m / TILE), batch)
    matmul_tiled[grid, (TILE, TILE)](cuda.to_device(a), cuda.to_device(b), c)
    return c.copy_to_host()


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _bmm(_float32(a)[None], _float32(b)[None])[0]


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    algorithm: str = "naive",
    scale: float | None = None,
) -> np.ndarray:
    if algorithm not in ATTENTION_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ATTENTION_ALGORITHMS}, got {algorithm!r}")
    head_dim = q.shape[-1]
    scale32 = np.float32(1.0 / math.sqrt(head_dim) if scale is None else scale)
    q3, k3, v3 = (_float32(t).reshape(-1, t.shape[-2], t.shape[-1]) for t in (q, k, v))
    bh, seq_q, _ = q3.shape
    out = cuda.device_array((bh, seq_q, v3.shape[2]), np.float32)
    dq, dk, dv = cuda.to_device(q3), cuda.to_device(k3), cuda.to_device(v3)
    if algorithm == "flash":
        if max(head_dim, v3.shape[2]) > FLASH_MAX_HEAD_DIM:
            raise ValueError(
                f"numba-cuda flash attention takes head_dim <= {FLASH_MAX_HEAD_DIM} (its shared K and V tiles "
                f"are that wide), got q {head_dim} and v {v3.shape[2]}; use algorithm='naive'"
            )
        flash_attention_forward[(bh, math.ceil(seq_q / FLASH_BLOCK)), FLASH_BLOCK](dq, dk, dv, out, scale32, causal)
    else:
        scores = cuda.device_array((bh, seq_q, k3.shape[1]), np.float32)
        threads = min(ELEMENTWISE_THREADS, max(32, bh * seq_q))
        attention_naive[math.ceil(bh * seq_q / threads), threads](dq, dk, dv, scores, out, scale32, causal)
    return out.copy_to_host().reshape(*q.shape[:-1], v.shape[-1])


# Argument types of each kernel, for compiling it ahead of time (`cuda.compile_ptx`) to read its resources.
KERNEL_SIGNATURES: dict[str, str] = {
    "vector_add": "void(float32[::1], float32[::1], float32[::1])",
    "block_sum": "void(float32[::1], float32[::1])",
    "block_sum_racy": "void(float32[::1], float32[::1])",
    "softmax_rows": "void(float32[:, ::1], float32[:, ::1])",
    "layernorm_rows": "void(float32[:, ::1], float32[::1], float32[::1], float32[:, ::1], float32)",
    "gelu_elementwise": "void(float32[::1], float32[::1], boolean)",
    "bias_gelu_elementwise": "void(float32[::1], float32[::1], float32[::1], boolean)",
    "matmul_tiled": "void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1])",
    "attention_naive": (
        "void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], "
        "float32, boolean)"
    ),
    "flash_attention_forward": (
        "void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], float32, boolean)"
    ),
}
