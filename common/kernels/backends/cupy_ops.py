"""The CUDA C kernels of `cuda/*.cu`, compiled at run time by CuPy and launched on CuPy arrays.

`cupy.RawModule(code=...)` hands a source to NVRTC (NVIDIA's runtime
compiler) on first use; `get_function(name)` finds an `extern "C"` kernel by
its unmangled name; calling it takes (grid, block, arguments) exactly like
CUDA's <<<grid, block>>>. Scalars must carry their C type (np.int32 for int,
np.float32 for float), since CuPy passes their bytes as they are.

Needs a GPU: without one the `cupy` backend reports why and this module's
functions are never called (tests/kernels/test_cuda.py still compiles every
source with nvcc). CuPy is imported on first launch, not at import.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from common.kernels.backends.cuda_c import cuda_sources
from common.kernels.ops import ATTENTION_ALGORITHMS

# Must equal the #defines of the .cu sources (a test reads them back).
MAX_THREADS = 256  # block_reduce.cu, softmax.cu, layernorm.cu: shared scratch of the row reductions
TILE = 16  # matmul.cu
FLASH_BLOCK = 32  # attention.cu: BLOCK
FLASH_MAX_HEAD_DIM = 128  # attention.cu: MAX_HEAD_DIM
ELEMENTWISE_THREADS = 128
MAX_BLOCKS = 1024

CupyArray = Any  # cupy.ndarray


def _cupy() -> Any:
    """The array module the launches allocate with (tests swap in NumPy to run the sources on the CPU)."""
    import cupy

    return cupy


@functools.cache
def _function(source: str, kernel: str) -> Any:
    """Kernel `kernel` of cuda/<source>.cu, compiled by NVRTC on first use (tests swap in `cuda_cpu.function`)."""
    import cupy

    return cupy.RawModule(code=cuda_sources()[source].read_text()).get_function(kernel)


def _float32(x: CupyArray) -> CupyArray:
    if x.dtype != np.float32:
        raise TypeError(f"the cupy kernels take float32 arrays, got {x.dtype}")
    return _cupy().ascontiguousarray(x)


def row_threads(n: int) -> int:
    """Threads per block for a row of n: a power of two (the tree reductions need one), 32 to MAX_THREADS."""
    return max(32, min(MAX_THREADS, 1 << max(0, n - 1).bit_length()))


def _grid_1d(n: int, threads: int) -> int:
    return max(1, min(MAX_BLOCKS, math.ceil(n / threads)))


def add_vectors(a: CupyArray, b: CupyArray) -> CupyArray:
    """a + b by vector_add.cu, one thread per element."""
    a, b = _float32(a), _float32(b)
    out = _cupy().empty_like(a)
    blocks = math.ceil(a.size / ELEMENTWISE_THREADS)
    _function("vector_add", "vector_add")((blocks,), (ELEMENTWISE_THREADS,), (a, b, out, np.int32(a.size)))
    return out


def sum_vector(x: CupyArray, threads: int = MAX_THREADS, racy: bool = False) -> float:
    """Sum by block_reduce.cu's block_sum launched until one value is left (racy=True: the teaching bug)."""
    if threads < 1 or threads > MAX_THREADS or threads & (threads - 1):
        raise ValueError(f"threads must be a power of two from 1 to {MAX_THREADS}, got {threads}")
    kernel = _function("block_reduce", "block_sum_racy" if racy else "block_sum")
    values = _float32(x).reshape(-1)
    while values.size > 1:
        partial = _cupy().empty(math.ceil(values.size / threads), np.float32)
        kernel((partial.size,), (threads,), (values, partial, np.int32(values.size)))
        values = partial
    return float(values[0])


def softmax(x: CupyArray) -> CupyArray:
    rows = _float32(x).reshape(-1, x.shape[-1])
    out = _cupy().empty_like(rows)
    n = rows.shape[1]
    _function("softmax", "softmax_rows")((rows.shape[0],), (row_threads(n),), (rows, out, np.int32(n)))
    return out.reshape(x.shape)


def layernorm(x: CupyArray, weight: CupyArray, bias: CupyArray, eps: float = 1e-5) -> CupyArray:
    rows = _float32(x).reshape(-1, x.shape[-1])
    out = _cupy().empty_like(rows)
    n = rows.shape[1]
    _function("layernorm", "layernorm_rows")(
        (rows.shape[0],),
        (row_threads(n),),
        (rows, _float32(weight), _float32(bias), out, np.int32(n), np.float32(eps)),
    )
    return out.reshape(x.shape)


def gelu(x: CupyArray, approximate: str = "none") -> CupyArray:
    flat = _float32(x).reshape(-1)
    out = _cupy().empty_like(flat)
    _function("bias_gelu", "gelu_elementwise")(
        (_grid_1d(flat.size, ELEMENTWISE_THREADS),),
        (ELEMENTWISE_THREADS,),
        (flat, out, np.int64(flat.size), np.int32(approximate == "tanh")),
    )
    return out.reshape(x.shape)


def bias_gelu(x: CupyArray, bias: CupyArray, approximate: str = "none") -> CupyArray:
    flat = _float32(x).reshape(-1)
    out = _cupy().empty_like(flat)
    _function("bias_gelu", "bias_gelu_elementwise")(
        (_grid_1d(flat.size, ELEMENTWISE_THREADS),),
        (ELEMENTWISE_THREADS,),
        (flat, _float32(bias), out, np.int64(flat.size), np.int32(bias.size), np.int32(approximate == "tanh")),
    )
    return out.reshape(x.shape)


def _bmm(a: CupyArray, b: CupyArray) -> CupyArray:
    """(batch, m, k) @ (batch, k, n) by matmul.cu: a grid of (n/TILE, m/TILE, batch) blocks of TILE x TILE."""
    batch, m, k = a.shape
    n = b.shape[2]
    c = _cupy().empty((batch, m, n), np.float32)
    grid = (math.ceil(n / TILE), math.ceil(m / TILE), batch)
    _function("matmul", "matmul_tiled")(grid, (TILE, TILE), (a, b, c, np.int32(m), np.int32(n), np.int32(k)))
    return c


def matmul(a: CupyArray, b: CupyArray) -> CupyArray:
    return _bmm(_float32(a)[None], _float32(b)[None])[0]


def attention(
    q: CupyArray,
    k: CupyArray,
    v: CupyArray,
    causal: bool = False,
    algorithm: str = "naive",
    scale: float | None = None,
) -> CupyArray:
    if algorithm not in ATTENTION_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ATTENTION_ALGORITHMS}, got {algorithm!r}")
    d = q.shape[-1]
    scale32 = np.float32(1.0 / math.sqrt(d) if scale is None else scale)
    q3, k3, v3 = (_float32(t).reshape(-1, t.shape[-2], t.shape[-1]) for t in (q, k, v))
    bh, seq_q, _ = q3.shape
    seq_k, dv = v3.shape[1], v3.shape[2]
    out = _cupy().empty((bh, seq_q, dv), np.float32)
    sizes = (np.int32(seq_q), np.int32(seq_k), np.int32(d), np.int32(dv), scale32, np.int32(causal))
    if algorithm == "flash":
        if max(d, dv) > FLASH_MAX_HEAD_DIM:
            raise ValueError(
                f"flash attention here takes head_dim <= {FLASH_MAX_HEAD_DIM} (the width of its shared K and V "
                f"tiles), got q {d} and v {dv}; use algorithm='naive'"
            )
        grid = (bh, math.ceil(seq_q / FLASH_BLOCK))
        _function("attention", "flash_attention_forward")(grid, (FLASH_BLOCK,), (q3, k3, v3, out, *sizes))
    else:
        scores = _cupy().empty((bh, seq_q, seq_k), np.float32)
        blocks = math.ceil(bh * seq_q / ELEMENTWISE_THREADS)
        _function("attention", "attention_naive")(
            (blocks,), (ELEMENTWISE_THREADS,), (q3, k3, v3, scores, out, np.int32(bh), *sizes)
        )
    return out.reshape(*q.shape[:-1], dv)


# Threads per block each kernel is launched with (the most, for the row kernels): for occupancy.
LAUNCH_THREADS: dict[str, int] = {
    "vector_add": ELEMENTWISE_THREADS,
    "block_sum": MAX_THREADS,
    "block_sum_racy": MAX_THREADS,
    "softmax_rows": MAX_THREADS,
    "layernorm_rows": MAX_THREADS,
    "gelu_elementwise": ELEMENTWISE_THREADS,
    "bias_gelu_elementwise": ELEMENTWISE_THREADS,
    "matmul_tiled": TILE * TILE,
    "attention_naive": ELEMENTWISE_THREADS,
    "flash_attention_forward": FLASH_BLOCK,
}
