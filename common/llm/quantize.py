"""Weight-only quantisation as a model transform (gpt-fast's approach): swap each `nn.Linear` of the
decoder for one that stores int8 or int4 weights and computes with the module 02 kernels.

Decoding a token reads every weight once, so its speed follows the bytes read per token; prefill is
compute-bound, so there the weights are dequantised and multiplied by torch as usual. The embedding
table stays float32 (it is read one row per token, not all of it); a tied output head gets its own
quantised copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.kernels import quant
from common.llm.evaluate import perplexity
from common.llm.model import Decoder
from common.llm.profile import step_seconds

SCHEMES = ("int8", "int4")
KERNEL_MAX_ROWS = 16  # up to this many activation rows, the kernel (memory-bound); beyond, dequantise + matmul


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is int8 per output row, or int4 in groups of `group` inputs."""

    def __init__(self, linear: nn.Linear, scheme: str, group: int = 128):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        w = linear.weight.detach().to(torch.float32).cpu().numpy()
        self.scheme, self.group = scheme, group
        self.out_features, self.in_features = w.shape
        q, scale = quant.quantize_int8(w) if scheme == "int8" else quant.quantize_int4(w, group)
        self.register_buffer("qweight", torch.from_numpy(q))
        self.register_buffer("scale", torch.from_numpy(scale))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())

    def dequantized(self) -> torch.Tensor:
        q, s = self.qweight.numpy(), self.scale.numpy()
        w = quant.dequantize_int8(q, s) if self.scheme == "int8" else quant.dequantize_int4(q, s, self.group)
        return torch.from_numpy(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > KERNEL_MAX_ROWS or x.requires_grad:
            return F.linear(x, self.dequantized(), self.bias)
        xs = rows.detach().to(torch.float32).contiguous().numpy()
        q, s = self.qweight.numpy(), self.scale.numpy()
        out = quant.linear_int8(xs, q, s) if self.scheme == "int8" else quant.linear_int4(xs, q, s, self.group)
        y = torch.from_numpy(out).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        group = f", group={self.group}" if self.scheme == "int4" else ""
        return f"{self.in_features} -> {self.out_features}, {self.scheme}{group}"


def quantize(model: nn.Module, scheme: str = "int8", group: int = 128) -> nn.Module:
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
    seen, total = set(), 0
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


VARIANTS: dict[str, tuple[str, int] | None] = {"fp32": None, "int8": ("int8", 0), "int4 g128": ("int4", 128),
                                               "int4 g32": ("int4", 32)}  # fmt: skip


def variant(model: Decoder, name: str) -> Decoder:
    """A quantised copy of `model` (`name` one of VARIANTS), or `model` itself for "fp32"."""
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {name!r}")
    if (how := VARIANTS[name]) is None:
        return model
    scheme, group = how
    return quantize(copy.deepcopy(model), scheme, group or 128)


def compare(
    model: Decoder,
    heldout: torch.Tensor | None = None,
    *,
    names: tuple[str, ...] = tuple(VARIANTS),
    context: int = 64,
) -> list[dict[str, Any]]:
    """Bytes read per token, held-out perplexity (when `heldout` tokens are given) and batch-1 decode speed
    (one step after `context` tokens) of each variant of `model`: the quantisation table."""
    rows = []
    for name in names:
        m = variant(model, name)
        row: dict[str, Any] = {"variant": name, "MB read per token": read_bytes_per_token(m) / 1e6}
        if heldout is not None:
            row["perplexity"] = perplexity(m, heldout)
        seconds = step_seconds(m, "static", context, steps=8)
        row |= {"ms per token": 1e3 * seconds, "tokens/s": 1 / seconds}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m common.llm.quantize`: the quantisation table of the shipped model on the whole held-out
    split, then batch-1 decode speed of the same variants on a random model of a known checkpoint's shape."""
    import argparse

    from common.llm.anatomy import CHECKPOINT_SHAPES
    from common.llm.corpus import stdlib_corpus, token_stream
    from common.llm.default import load_default
    from common.llm.model import DecoderConfig

    parser = argparse.ArgumentParser(prog="python -m common.llm.quantize", description=main.__doc__)
    parser.add_argument("--shape", choices=list(CHECKPOINT_SHAPES), default="SmolLM-135M", help="for the speed rows")
    parser.add_argument("--group", type=int, choices=(32, 128), default=32, help="int4 group for the speed rows")
    args = parser.parse_args(argv)
    model, tokenizer = load_default()
    heldout = token_stream(tokenizer, stdlib_corpus().heldout_texts)
    print(f"default model, {heldout.numel():,} held-out tokens")
    _print(compare(model, heldout))
    torch.manual_seed(0)
    big = Decoder(DecoderConfig.from_hf(CHECKPOINT_SHAPES[args.shape])).eval()
    names = ("fp32", "int8", f"int4 g{args.group}")
    print(f"\n{args.shape} shape, random weights (speed only)")
    _print(compare(big, names=names))
    return 0


def _print(rows: list[dict[str, Any]]) -> None:
    print(" | ".join(f"{k:>18}" for k in rows[0]))
    for row in rows:
        print(" | ".join(f"{v:>18.2f}" if isinstance(v, float) else f"{v:>18}" for v in row.values()))


if __name__ == "__main__":
    raise SystemExit(main())
