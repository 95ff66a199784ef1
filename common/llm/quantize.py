"""Weight-only quantisation as a model transform (gpt-fast's approach): swap each `nn.Linear` of the
decoder for one that stores int8 or int4 weights and computes with the module 02 kernels.

Decoding a token reads every weight once, so its speed follows the bytes read per token; prefill is
compute-bound, so there the weights are dequantised and multiplied by torch as usual. The embedding
table stays float32 (it is read one row per token, not all of it); a tied output head gets its own
quantised copy.

This file transforms a model and counts what the transform gives (`weight_bytes`, `read_bytes_per_token`);
measuring the variants is `common.llm.profile.quantisation_table`, and `python -m benchmarks quantisation`
prints that table for the shipped model and a SmolLM-135M shape.
"""

from __future__ import annotations

import copy
import importlib
from types import ModuleType
from typing import Literal, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import nn

from common.llm.model import Decoder

Scheme = Literal["int8", "int4"]
SCHEMES: tuple[Scheme, ...] = get_args(Scheme)
Variant = Literal["fp32", "int8", "int4 g128", "int4 g32"]  # the rows of the quantisation table
ModelT = TypeVar("ModelT", bound=nn.Module)
KERNEL_MAX_ROWS = 16  # up to this many activation rows, the kernel (memory-bound); beyond, dequantise + matmul


def _kernels() -> ModuleType:
    """The module 02 Numba kernels (`common.kernels.quant`), imported on first use: importing Numba takes about
    a second, and `import common.llm` should not pay it for a model that is never quantised."""
    return importlib.import_module("common.kernels.quant")


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is int8 per output row, or int4 in groups of `group` inputs."""

    qweight: torch.Tensor  # buffers, declared so a type checker knows them (nn.Module types them loosely)
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, scheme: Scheme, group: int = 128):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        w = linear.weight.detach().to(torch.float32).cpu().numpy()
        self.scheme, self.group = scheme, group
        self.out_features, self.in_features = w.shape
        quant = _kernels()
        q, scale = quant.quantize_int8(w) if scheme == "int8" else quant.quantize_int4(w, group)
        self.register_buffer("qweight", torch.from_numpy(q))
        self.register_buffer("scale", torch.from_numpy(scale))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())

    def dequantized(self) -> torch.Tensor:
        q, s = self.qweight.numpy(), self.scale.numpy()
        quant = _kernels()
        w = quant.dequantize_int8(q, s) if self.scheme == "int8" else quant.dequantize_int4(q, s, self.group)
        return torch.from_numpy(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > KERNEL_MAX_ROWS or x.requires_grad:
            return F.linear(x, self.dequantized(), self.bias)
        xs = rows.detach().to(torch.float32).contiguous().numpy()
        q, s = self.qweight.numpy(), self.scale.numpy()
        quant = _kernels()
        out = quant.linear_int8(xs, q, s) if self.scheme == "int8" else quant.linear_int4(xs, q, s, self.group)
        y = torch.from_numpy(out).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        group = f", group={self.group}" if self.scheme == "int4" else ""
        return f"{self.in_features} -> {self.out_features}, {self.scheme}{group}"


def quantize(model: ModelT, scheme: Scheme = "int8", group: int = 128) -> ModelT:
    """Replace every `nn.Linear` of `model` in place with a `QuantizedLinear`; returns the model.

    int4 needs every in_features divisible by `group` (32, 64 or 128); a layer that is not is named.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if scheme == "int4" and (bad := [n for n, m in targets if m.in_features % group]):
        raise ValueError(f"int4 groups of {group} do not divide the inputs of {', '.join(bad[:5])}")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantizedLinear(linear, scheme, group))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (quantised weights and their scales included), shared ones once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.nbytes
    return total


def read_bytes_per_token(model: nn.Module) -> int:
    """Bytes a decode step reads for every token: the weights of every linear layer (quantised ones with
    their scales), biases included. The embedding table is left out: a token reads one row of it."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            total += m.qweight.nbytes + m.scale.nbytes + (0 if m.bias is None else m.bias.nbytes)
        elif isinstance(m, nn.Linear):
            total += sum(p.nbytes for p in m.parameters(recurse=False))
    return total


VARIANTS: dict[Variant, tuple[Scheme, int] | None] = {"fp32": None, "int8": ("int8", 0), "int4 g128": ("int4", 128),
                                                     "int4 g32": ("int4", 32)}  # fmt: skip


def variant(model: Decoder, name: Variant) -> Decoder:
    """A quantised copy of `model` (`name` one of VARIANTS), or `model` itself for "fp32"."""
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {name!r}")
    if (how := VARIANTS[name]) is None:
        return model
    scheme, group = how
    return quantize(copy.deepcopy(model), scheme, group or 128)
