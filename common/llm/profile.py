"""Timing one decode step at a given context length, with no cache, the static cache or the paged cache.

Why a step and not a whole generation: the cost of a step depends on how many tokens came before it,
and that dependence is the lesson. Without a cache a step reruns the model over every token so far
(its cost grows with the context); with a cache it computes one token and reads the cached keys and
values (its cost is nearly flat until the KV bytes rival the weight bytes).
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import torch

from common.llm.cache import StaticCache
from common.llm.model import Decoder
from common.llm.paged import PagedKVCache

Mode = Literal["none", "static", "paged"]
MODES: tuple[Mode, ...] = ("none", "static", "paged")


@torch.inference_mode()
def step_seconds(
    model: Decoder, mode: Mode, context: int, *, batch: int = 1, steps: int = 8, block_size: int = 16, seed: int = 0
) -> float:
    """The median time of one decode step (one new token per row) after `context` tokens, over `steps`
    consecutive steps; the prefill that builds the context is not timed (the first step is a warm-up)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    config = model.config
    if context < 1 or context + steps + 1 > config.max_position_embeddings:
        raise ValueError(
            f"context {context} + {steps + 1} steps must fit the model's {config.max_position_embeddings} positions"
        )
    dtype = next(model.parameters()).dtype
    ids = torch.randint(0, config.vocab_size, (batch, context), generator=torch.Generator().manual_seed(seed))
    times = []
    if mode == "none":
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            token = model(ids)[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
            ids = torch.cat([ids, token], dim=1)
    elif mode == "static":
        cache = StaticCache(config, batch, context + steps + 1, dtype=dtype)
        token = model(ids, cache=cache)[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            token = model(token, cache=cache)[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
    else:
        blocks = batch * (-(-(context + steps + 1) // block_size))
        cache = PagedKVCache(config, blocks, block_size, dtype=dtype)
        seqs = [cache.manager.allocate(row) for row in ids.tolist()]
        view = cache.batch(seqs, [0] * batch)
        token = model(ids, view.positions(context), view)[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            view = cache.append(seqs, token[:, 0].tolist())
            token = model(token, view.positions(1), view)[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])
