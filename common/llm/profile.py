"""Timing one decode step at a given context length, with no cache, the static cache or the paged cache;
and the quantisation table (bytes read, perplexity and decode speed of each quantised variant of a model).

Why a step and not a whole generation: the cost of a step depends on how many tokens came before it,
and that dependence is the lesson. Without a cache a step reruns the model over every token so far
(its cost grows with the context); with a cache it computes one token and reads the cached keys and
values (its cost is nearly flat until the KV bytes rival the weight bytes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch

from common.llm.cache import StaticCache
from common.llm.evaluate import perplexity
from common.llm.model import Decoder
from common.llm.paged import PagedKVCache
from common.llm.quantize import VARIANTS, Variant, read_bytes_per_token, variant

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
        paged = PagedKVCache(config, blocks, block_size, dtype=dtype)
        seqs = [paged.manager.allocate(row) for row in ids.tolist()]
        view = paged.batch(seqs, [0] * batch)
        token = model(ids, view.positions(context), view)[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            view = paged.append(seqs, token[:, 0].tolist())
            token = model(token, view.positions(1), view)[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def quantisation_table(
    model: Decoder,
    heldout: torch.Tensor | None = None,
    *,
    names: Sequence[Variant] = tuple(VARIANTS),
    context: int = 64,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """One row per quantised variant of `model` (`names` of `quantize.VARIANTS`): the MB a decode step reads
    per token, the held-out perplexity (when `heldout` token ids are given) and the batch-1 decode step's
    median time after `context` tokens, as ms per token and tokens/s.

    With `rounds` > 1 the variants are timed in turn, round after round, and each reports the median of its
    rounds: on a shared machine a slow moment then hits every variant alike, not only the one being timed."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    models = {name: variant(model, name) for name in names}
    rows = {}
    for name, m in models.items():
        rows[name] = {"variant": name, "MB read per token": read_bytes_per_token(m) / 1e6}
        if heldout is not None:
            rows[name]["perplexity"] = perplexity(m, heldout)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, m in models.items():
            times[name].append(step_seconds(m, "static", context, steps=8))
    for name, row in rows.items():
        seconds = statistics.median(times[name])
        row |= {"ms per token": 1e3 * seconds, "tokens/s": 1 / seconds}
    return list(rows.values())
