"""The six ops as Triton kernels, on torch float32 tensors.

On a GPU the kernels compile for it and take CUDA tensors. Without one they run
on Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported),
which executes each program instance with NumPy and takes CPU tensors: correct,
and slow, so the block sizes below are parameters and the interpreter gets
larger ones (fewer program instances) than a GPU, where a block must fit in
registers and shared memory.

Kernels, one program instance each:
- softmax: one row; BLOCK is the row length rounded up to a power of two, the
  tail masked with -inf. The same kernel scales and masks (causal) the scores
  of naive attention.
- layernorm: one row. gelu, bias_gelu: one BLOCK of elements.
- matmul: one (BLOCK_M, BLOCK_N) tile of the output of one matrix of a batch,
  summed over BLOCK_K slices with tl.dot; masked loads handle ragged edges.
- flash attention: one query block of one (batch, head), looping over key
  blocks with the online softmax, the structure of Triton's fused-attention
  tutorial (one loop with the causal mask, rather than its two stages).
- naive attention: the matmul kernel (q k^T), the softmax kernel (scale and
  causal mask), the matmul kernel again (p v): the score matrix goes to memory.

tl.dot runs with input_precision="ieee": on an NVIDIA GPU the float32 default
is TF32, whose 10-bit mantissa would miss the reference by ~1e-3.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from common.kernels.ops import ATTENTION_ALGORITHMS, GELU_APPROXIMATIONS

# Triton picks the interpreter when a kernel is decorated, so what counts is the
# environment when this module is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

ELEMENTWISE_BLOCK = 1024
MATMUL_BLOCKS = (32, 32, 32) if INTERPRETED else (64, 64, 32)  # (BLOCK_M, BLOCK_N, BLOCK_K)
ATTENTION_BLOCKS = (32, 32) if INTERPRETED else (64, 64)  # (BLOCK_M queries, BLOCK_N keys)
MIN_DOT = 16  # tl.dot on a GPU needs every block dimension >= 16


def _dot_block(n: int) -> int:
    return max(MIN_DOT, triton.next_power_of_2(n))


def _check(*xs: torch.Tensor) -> None:
    for x in xs:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            raise ValueError(f"Triton kernels here take float32 torch tensors, got {getattr(x, 'dtype', type(x))}")
        if x.device.type != "cuda" and not INTERPRETED:
            raise ValueError(
                f"a {x.device.type} tensor needs Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                "triton, or pass CUDA tensors"
            )
        if x.device != xs[0].device:
            raise ValueError(f"all tensors must be on one device, got {x.device} and {xs[0].device}")


# --- row kernels: softmax, layernorm -----------------------------------------


@triton.jit
def _softmax_kernel(x_ptr, y_ptr, n_cols, rows_per_matrix, scale, BLOCK: tl.constexpr, CAUSAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    visible = cols < n_cols
    if CAUSAL:  # row i of each (rows_per_matrix, n_cols) matrix sees columns j <= i
        visible = visible & (cols <= row % rows_per_matrix)
    x = tl.load(x_ptr + row * n_cols + cols, mask=visible, other=-float("inf")) * scale
    num = tl.exp(x - tl.max(x, axis=0))  # masked columns: exp(-inf) = 0
    tl.store(y_ptr + row * n_cols + cols, num / tl.sum(num, axis=0), mask=cols < n_cols)


def _row_softmax(x: torch.Tensor, scale: float = 1.0, causal: bool = False) -> torch.Tensor:
    """Softmax over the last axis of a contiguous tensor, of scale * x, optionally causally masked."""
    n = x.shape[-1]
    y = torch.empty_like(x)
    rows = x.numel() // n
    rows_per_matrix = x.shape[-2] if x.ndim >= 2 else 1
    _softmax_kernel[(rows,)](x, y, n, rows_per_matrix, scale, BLOCK=triton.next_power_of_2(n), CAUSAL=causal)
    return y


def softmax(x: torch.Tensor) -> torch.Tensor:
    _check(x)
    return _row_softmax(x.contiguous())


@triton.jit
def _layernorm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=inside, other=0.0)
    mean = tl.sum(x, axis=0) / n_cols
    centred = tl.where(inside, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0)
    b = tl.load(b_ptr + cols, mask=inside, other=0.0)
    tl.store(y_ptr + row * n_cols + cols, centred * rstd * w + b, mask=inside)


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    _check(x, weight, bias)
    x = x.contiguous()
    n = x.shape[-1]
    y = torch.empty_like(x)
    _layernorm_kernel[(x.numel() // n,)](
        x, weight.contiguous(), bias.contiguous(), y, n, float(eps), BLOCK=triton.next_power_of_2(n)
    )
    return y


# --- elementwise: gelu, bias_gelu --------------------------------------------


@triton.jit
def _gelu(z, TANH: tl.constexpr):
    if TANH:
        u = 0.7978845608028654 * (z + 0.044715 * z * z * z)  # sqrt(2/pi)
        e = tl.exp(-2.0 * tl.abs(u))  # tl has no tanh; this form of it cannot overflow
        t = (1.0 - e) / (1.0 + e)
        return 0.5 * z * (1.0 + tl.where(u < 0, -t, t))
    return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))  # 1/sqrt(2)


@triton.jit
def _bias_gelu_kernel(
    x_ptr, b_ptr, y_ptr, numel, n_cols, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, TANH: tl.constexpr
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    z = tl.load(x_ptr + offs, mask=inside, other=0.0)
    if HAS_BIAS:
        z += tl.load(b_ptr + offs % n_cols, mask=inside, other=0.0)
    tl.store(y_ptr + offs, _gelu(z, TANH), mask=inside)


def _approximation(approximate: str) -> bool:
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
    return approximate == "tanh"


def _launch_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str, block: int) -> torch.Tensor:
    tanh = _approximation(approximate)
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    b = x if bias is None else bias.contiguous()  # a pointer the kernel never reads when HAS_BIAS is False
    _bias_gelu_kernel[(triton.cdiv(n, block),)](
        x, b, y, n, x.shape[-1], BLOCK=block, HAS_BIAS=bias is not None, TANH=tanh
    )
    return y


def gelu(x: torch.Tensor, approximate: str = "none", block: int = ELEMENTWISE_BLOCK) -> torch.Tensor:
    _check(x)
    return _launch_gelu(x, None, approximate, block)


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor, approximate: str = "none", block: int = ELEMENTWISE_BLOCK
) -> torch.Tensor:
    _check(x, bias)
    return _launch_gelu(x, bias, approximate, block)


# --- matmul ------------------------------------------------------------------


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, M, N, K,
    sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptr += batch * sab
    b_ptr += batch * sbb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        a = tl.load(
            a_ptr + rm[:, None] * sam + ks[None, :] * sak, mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0
        )
        b = tl.load(
            b_ptr + ks[:, None] * sbk + rn[None, :] * sbn, mask=(ks[:, None] < K) & (rn[None, :] < N), other=0.0
        )
        acc += tl.dot(a, b, input_precision="ieee")
    c = c_ptr + batch * scb + rm[:, None] * scm + rn[None, :] * scn
    tl.store(c, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def _batched_matmul(a: torch.Tensor, b: torch.Tensor, blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """(batch, m, k) @ (batch, k, n) for any strides (a transposed view costs no copy)."""
    batch, m, k = a.shape
    n = b.shape[2]
    bm, bn, bk = blocks or MATMUL_BLOCKS
    bm, bn, bk = (max(MIN_DOT, min(blk, triton.next_power_of_2(dim))) for blk, dim in ((bm, m), (bn, n), (bk, k)))
    c = torch.empty((batch, m, n), dtype=a.dtype, device=a.device)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), batch)
    _matmul_kernel[grid](a, b, c, m, n, k, *a.stride(), *b.stride(), *c.stride(), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return c


def matmul(a: torch.Tensor, b: torch.Tensor, blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """a (m, k) @ b (k, n); `blocks` = (BLOCK_M, BLOCK_N, BLOCK_K), each shrunk to the matrix and kept >= 16."""
    _check(a, b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul takes a (m, k) and b (k, n), got {tuple(a.shape)} and {tuple(b.shape)}")
    return _batched_matmul(a[None], b[None], blocks)[0]


# --- attention ---------------------------------------------------------------


@triton.jit
def _flash_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, seq_q, seq_k, d, dv, scale,
    sqb, sqs, skb, sks, svb, svs, sob, sos,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr,
):  # fmt: skip
    start_m, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    vdims = tl.arange(0, BLOCK_DV)
    q = tl.load(
        q_ptr + bh * sqb + rows[:, None] * sqs + dims[None, :],
        mask=(rows[:, None] < seq_q) & (dims[None, :] < d),
        other=0.0,
    )
    m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)  # running max of each row
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp(score - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)  # running sum of exp(score - m_i) * v
    hi = seq_k
    if CAUSAL:  # no row of this block sees a key past its last row: skip those tiles whole
        hi = tl.minimum(seq_k, (start_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k_t = tl.load(  # (BLOCK_D, BLOCK_N): k transposed by its pointers, not in memory
            k_ptr + bh * skb + keys[None, :] * sks + dims[:, None],
            mask=(keys[None, :] < seq_k) & (dims[:, None] < d),
            other=0.0,
        )
        s = tl.dot(q, k_t, input_precision="ieee") * scale
        visible = keys[None, :] < seq_k
        if CAUSAL:
            visible = visible & (keys[None, :] <= rows[:, None])
        s = tl.where(visible, s, -float("inf"))
        # The first tile always holds key 0, which every row sees, so m_new is finite from then on.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        correction = tl.exp(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + bh * svb + keys[:, None] * svs + vdims[None, :],
            mask=(keys[:, None] < seq_k) & (vdims[None, :] < dv),
            other=0.0,
        )
        acc = acc * correction[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        o_ptr + bh * sob + rows[:, None] * sos + vdims[None, :],
        out,
        mask=(rows[:, None] < seq_q) & (vdims[None, :] < dv),
    )


def _flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, blocks: tuple[int, int]
) -> torch.Tensor:
    batch, seq_q, d = q.shape
    seq_k, dv = v.shape[1:]
    bm, bn = (max(MIN_DOT, min(blk, triton.next_power_of_2(n))) for blk, n in zip(blocks, (seq_q, seq_k), strict=True))
    o = torch.empty((batch, seq_q, dv), dtype=q.dtype, device=q.device)
    strides = [s for x in (q, k, v, o) for s in x.stride()[:2]]  # (batch, row); each row is contiguous
    _flash_kernel[(triton.cdiv(seq_q, bm), batch)](
        q, k, v, o, seq_q, seq_k, d, dv, scale, *strides,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_dot_block(d), BLOCK_DV=_dot_block(dv), CAUSAL=causal,
    )  # fmt: skip
    return o


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    algorithm: str = "naive",
    scale: float | None = None,
    blocks: tuple[int, int] | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale) v over (..., seq, head_dim); `blocks` = (queries, keys) per flash tile."""
    _check(q, k, v)
    if algorithm not in ATTENTION_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ATTENTION_ALGORITHMS}, got {algorithm!r}")
    if q.ndim < 2 or q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"need q (..., seq_q, d), k (..., seq_k, d), v (..., seq_k, d_v); got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same sequence length, got {k.shape[-2]} and {v.shape[-2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q3, k3, v3 = (x.reshape(-1, *x.shape[-2:]).contiguous() for x in (q, k, v))
    if algorithm == "flash":
        out = _flash(q3, k3, v3, bool(causal), scale, blocks or ATTENTION_BLOCKS)
    else:
        scores = _batched_matmul(q3, k3.transpose(1, 2))  # (batch, seq_q, seq_k), in memory
        out = _batched_matmul(_row_softmax(scores, scale, bool(causal)), v3)
    return out.reshape(*q.shape[:-1], v.shape[-1])
