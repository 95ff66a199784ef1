"""Held-out perplexity: the one quality figure the course holds every variant of a model to.

exp(mean next-token loss) on text the model never trained on. Lower is better; a model that guesses
uniformly over a vocabulary of V scores V. Quantised, compiled or cached variants of a model are
compared on the same token stream with this same definition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.llm.model import Decoder


@torch.no_grad()
def perplexity(model: Decoder, tokens: torch.Tensor, context: int | None = None, batch_size: int = 16) -> float:
    """exp(mean next-token loss) over a 1-D id stream, cut into windows of `context` + 1 tokens that
    overlap by one, so every token but the first is predicted exactly once (with what precedes it in
    its window as context). The same definition later modules hold quantised models to."""
    return math.exp(total_nll(model, tokens, context, batch_size)[0] / max(1, tokens.numel() - 1))


def total_nll(model: Decoder, tokens: torch.Tensor, context: int | None, batch_size: int) -> tuple[float, int]:
    """The summed next-token loss (nats) and how many tokens it covers, windowed as `perplexity` says."""
    context = context or model.config.max_position_embeddings
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(f"tokens must be a 1-D stream of at least 2 ids, got shape {tuple(tokens.shape)}")
    if context > model.config.max_position_embeddings:
        raise ValueError(f"context {context} exceeds the model's {model.config.max_position_embeddings} positions")
    starts = list(range(0, tokens.numel() - 1, context))
    windows = [tokens[s : s + context + 1] for s in starts]
    full = [w for w in windows if w.numel() == context + 1]
    total, count = 0.0, 0
    groups = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    groups += [w[None] for w in windows if w.numel() != context + 1]  # the ragged tail, on its own
    for batch in groups:
        logits = model(batch[:, :-1]).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum").item()
        count += batch[:, 1:].numel()
    return total, count
