"""The ops with PyTorch's own kernels: the baseline every hand-written backend races.

Each function takes and returns torch tensors on any device and in any float
dtype torch computes in (on the CPU: ATen's vectorised kernels, oneDNN/MKL
for matmul; on a GPU: cuBLAS and torch's CUDA kernels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Unfused on purpose, as eager PyTorch runs it: x + bias is written to memory, then read by gelu."""
    return F.gelu(x + bias, approximate=approximate)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def causal_mask(seq_q: int, seq_k: int, device: torch.device) -> torch.Tensor:
    """True where query i may see key j: j <= i, top-left aligned like SDPA's is_causal."""
    return torch.ones(seq_q, seq_k, dtype=torch.bool, device=device).tril()


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    algorithm: str = "naive",
    scale: float | None = None,
) -> torch.Tensor:
    """'naive' spells the math out (the whole score matrix in memory); 'flash' is SDPA, which picks
    a fused, tiled kernel (flash attention on the CPU too) that never stores the scores."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if algorithm == "flash":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
