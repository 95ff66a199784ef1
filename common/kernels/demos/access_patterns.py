# mypy: no-check-untyped-defs
# Unannotated CUDA Python, compiled by Numba (or run by its simulator), as in backends/numba_cuda.py.
"""Kernels that differ only in the addresses their threads touch: coalesced or strided global loads, and
shared-memory tiles read along rows, along columns, and along columns of a padded tile.

`common.kernels.analysis.memory_access.trace_launch` counts what each costs: 32-byte sectors per warp for the
global loads, the bank-conflict degree for the shared ones. Every kernel computes the same thing as its
partner (a copy), so only the access pattern differs.
"""

from __future__ import annotations

from numba import cuda, float32

TILE = 32  # one warp's width: a tile row is 32 float32, 128 bytes, one word in each of the 32 banks


@cuda.jit
def copy_strided(x, out, stride):
    """out[i] = x[(i * stride) % n]: stride 1 is coalesced; stride 32 puts each thread of a warp in its own sector."""
    i = cuda.grid(1)
    n = x.shape[0]
    if i < out.shape[0]:
        out[i] = x[(i * stride) % n]


@cuda.jit
def tile_rows(x, out):
    """A (rows, 32) slab through a shared tile, each warp along a tile row: 32 consecutive words, 32 banks."""
    tile = cuda.shared.array((TILE, TILE), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tile[ty, tx] = x[ty, tx]
    cuda.syncthreads()
    out[ty, tx] = tile[ty, tx]


@cuda.jit(device=True)
def _through_columns(tile, x, out):
    """Store the slab down the tile's columns (thread tx of a warp writes row tx), then read it back the same way."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tile[tx, ty] = x[ty, tx]
    cuda.syncthreads()
    out[ty, tx] = tile[tx, ty]


@cuda.jit
def tile_columns(x, out):
    """The same slab stored down tile columns: a warp's 32 words are 32 floats apart, all in one bank."""
    _through_columns(cuda.shared.array((TILE, TILE), float32), x, out)


@cuda.jit
def tile_columns_padded(x, out):
    """Columns of a tile one float wider (TILE + 1): word tx * 33 + ty lands in bank (tx + ty) % 32, all different."""
    _through_columns(cuda.shared.array((TILE, TILE + 1), float32), x, out)
