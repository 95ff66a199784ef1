"""Generation: prefill the prompts, then decode one token per step from the KV cache.

Prompts of different lengths are left-padded into one batch: padding slots are marked invalid in the
cache, so no real token attends to them, and every row has its own positions, so a row's tokens get the
same rotary angles as when it is generated alone (a test holds batched and alone equal).

Choosing a token (`choose`): greedy when `temperature` is 0; otherwise the logits are divided by the
temperature, cut to the `top_k` most likely, then to the smallest set whose probability reaches `top_p`,
then to the tokens at least `min_p` times as likely as the most likely one (min-p, Nguyen et al. 2024,
https://arxiv.org/abs/2407.01082), and a token is drawn from what is left with a seeded generator, so a seed reproduces a generation.
`distribution` returns that filtered distribution; tests hold it equal to transformers' logits warpers.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from common.llm.cache import StaticCache
from common.llm.model import Decoder
from common.llm.paged import PagedKVCache
from common.llm.tokenizer import Detokenizer

# Why a row stopped: at a stop token (kept in its tokens), at a stop string (its text cut before it), or
# after max_new_tokens. OpenAI's API names the first two "stop" and the last "length".
FinishReason = Literal["stop_token", "stop_string", "max_tokens"]
FINISH_REASONS: tuple[FinishReason, ...] = ("stop_token", "stop_string", "max_tokens")


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. The defaults are greedy decoding."""

    temperature: float = 0.0  # 0: always the most likely token
    top_k: int = 0  # 0: no cut
    top_p: float = 1.0  # 1: no cut
    min_p: float = 0.0  # 0: no cut; keeps tokens with probability >= min_p * the top token's
    seed: int | None = None  # None: a different draw every time

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 keeps every token), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def distribution(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The probabilities (batch, vocab) a token is drawn from: temperature, then top-k, top-p and min-p (the
    order of transformers' warpers)."""
    logits = logits.to(torch.float32)
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # probability of the tokens ranked above each one
        drop_sorted = before >= sampling.top_p  # keep the smallest prefix that reaches top_p (at least one)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if sampling.min_p > 0:
        # A cut relative to the top token: strict where the model is sure, loose where it is not. The top
        # token always passes (p_max >= min_p * p_max), so something is always kept.
        probs = probs.masked_fill(probs < sampling.min_p * probs.amax(-1, keepdim=True), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def entropy_bits(probs: torch.Tensor) -> torch.Tensor:
    """The entropy of each row of `probs` (..., vocab) in bits: how many yes/no questions a draw is worth."""
    logs = torch.where(probs > 0, probs.log2(), torch.zeros_like(probs))
    return -(probs * logs).sum(-1)


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row (batch,) from the last position's logits (batch, vocab)."""
    if sampling.greedy:
        return logits.argmax(-1)
    return torch.multinomial(distribution(logits, sampling), 1, generator=generator).squeeze(-1)


CompileMode = Literal["default", "reduce-overhead"]  # the two torch.compile modes a decode step uses


def compile_mode(device: torch.device) -> CompileMode:
    """torch.compile's mode for a decode step: on a GPU, "reduce-overhead" replays the step as a CUDA
    graph (one launch instead of hundreds of small kernels; the static cache's fixed addresses allow it);
    on a CPU there is no launch overhead to remove, so the default."""
    return "reduce-overhead" if device.type == "cuda" else "default"


class DecodeStep:
    """One decode step (a token per row in, the next logits out), eager or compiled with `torch.compile`.

    Compiled, it runs on a cache in static-shape mode (`StaticCache.static`): every step has the same
    shapes, so one graph serves every step of every generation with the same batch and cache size.
    `compile_seconds` is what the first call cost, compiling included.
    """

    def __init__(self, model: Decoder, compile: bool = False):
        self.model, self.compiled = model, compile
        self.mode = compile_mode(next(model.parameters()).device)
        self._fn = torch.compile(self._step, dynamic=False, mode=self.mode) if compile else self._step
        self.compile_seconds: float | None = None

    def _step(self, token: torch.Tensor, position: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        return self.model(token, position, cache)[:, -1]

    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        if self.compiled and self.compile_seconds is None:
            t0 = time.perf_counter()
            out = self._fn(token, position, cache)
            self.compile_seconds = time.perf_counter() - t0
            return out
        return self._fn(token, position, cache)


_compiled_steps: weakref.WeakKeyDictionary[Decoder, DecodeStep] = weakref.WeakKeyDictionary()


def compiled_step(model: Decoder) -> DecodeStep:
    """The model's compiled decode step, made once and reused (compiling takes seconds)."""
    if model not in _compiled_steps:
        _compiled_steps[model] = DecodeStep(model, compile=True)
    return _compiled_steps[model]


@dataclass
class Generation:
    """One prompt's continuation: its new tokens, their text if a tokenizer was given, and why it stopped."""

    tokens: list[int]
    finish_reason: FinishReason
    text: str | None = None


def _prompts(prompts: Sequence[Sequence[int]], vocab: int) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    out = [list(map(int, p)) for p in prompts]
    if not out or any(not p for p in out):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    if bad := sorted({t for p in out for t in p if not 0 <= t < vocab})[:5]:
        raise ValueError(f"token ids {bad} are outside the vocabulary of {vocab}")
    return out


def _check_fits(rows: list[list[int]], max_new_tokens: int, context: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(map(len, rows))
    if longest + max_new_tokens > context:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the model's context of "
            f"{context} tokens: shorten the prompt or ask for at most {max(context - longest, 0)} new tokens"
        )


@torch.inference_mode()
def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    stop_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    tokenizer: Detokenizer | None = None,
    pad_id: int = 0,
    compile: bool = False,
) -> list[Generation]:
    """Continue each prompt (a list of token ids) by up to `max_new_tokens`, all in one batch.

    A row stops at a token of `stop_token_ids` (kept) or when its text contains one of `stop_strings`
    (which needs `tokenizer`, anything with `decode(ids)`; the text is cut before the stop string).
    A prompt that, with `max_new_tokens`, would not fit the model's context is refused with the limit.
    `compile=True` runs the decode steps through `compiled_step(model)` (static shapes; the first call
    compiles, which takes seconds); eager is the default.
    """
    config = model.config
    rows = _prompts(prompts, config.vocab_size)
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    _check_fits(rows, max_new_tokens, config.max_position_embeddings)
    longest = max(map(len, rows))
    b = len(rows)
    ids = torch.full((b, longest), pad_id, dtype=torch.long)
    valid = torch.zeros(b, longest, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = torch.tensor(row)
        valid[i, longest - len(row) :] = True
    weight = next(model.parameters())
    ids, valid = ids.to(weight.device), valid.to(weight.device)
    positions = (valid.cumsum(-1) - 1).clamp(min=0)
    cache = StaticCache(config, b, longest + max_new_tokens, dtype=weight.dtype, device=weight.device)
    generator = None if sampling.seed is None else torch.Generator(weight.device).manual_seed(sampling.seed)

    logits = model(ids, positions, cache, valid)[:, -1]  # prefill, eager
    position = positions[:, -1:]
    step_fn = compiled_step(model) if compile else DecodeStep(model)
    if compile:
        cache.static()
    out: list[list[int]] = [[] for _ in range(b)]
    reasons: list[FinishReason | None] = [None] * b
    texts: list[str | None] = [None] * b
    stops = set(map(int, stop_token_ids))
    for step in range(max_new_tokens):
        token = choose(logits, sampling, generator)
        for i, t in enumerate(token.tolist()):
            if reasons[i] is not None:
                continue
            out[i].append(t)
            if t in stops:
                reasons[i] = "stop_token"
            elif stop_strings and tokenizer is not None:  # checked above: stop strings come with a tokenizer
                text = tokenizer.decode(out[i])
                cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
                if cut >= 0:
                    reasons[i], texts[i] = "stop_string", text[:cut]
        if all(r is not None for r in reasons) or step == max_new_tokens - 1:
            break
        position = position + 1
        logits = step_fn(token[:, None], position, cache)
        if cache.slot is not None:
            cache.advance(1)
    if tokenizer is not None:  # rows cut at a stop string already have their text
        texts = [tokenizer.decode(o) if t is None else t for o, t in zip(out, texts, strict=True)]
    return [Generation(o, r or "max_tokens", t) for o, r, t in zip(out, reasons, texts, strict=True)]


@torch.inference_mode()
def generate_paged(
    model: Decoder,
    cache: PagedKVCache,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    stop_token_ids: Sequence[int] = (),
) -> list[Generation]:
    """`generate` on a paged cache: each prompt gets a block table, and the leading full blocks that the
    prefix cache already holds (a shared system prompt, say) are not computed again. Rows decode together
    and take a block only when their last one fills; a row that stops leaves the batch. Every block is
    released at the end (keeping its hash, so a later prompt with the same prefix still hits).
    """
    rows = _prompts(prompts, model.config.vocab_size)
    _check_fits(rows, max_new_tokens, model.config.max_position_embeddings)
    manager, stops = cache.manager, set(map(int, stop_token_ids))
    generator = None if sampling.seed is None else torch.Generator().manual_seed(sampling.seed)
    seqs = []
    try:
        for row in rows:
            seqs.append(manager.allocate(row))
        logits = []
        for seq in seqs:  # prefill one by one: each starts where its cached prefix ends
            known = min(seq.cached_tokens, len(seq) - 1)  # a fully cached prompt recomputes its last token
            new = torch.tensor([seq.tokens[known:]])
            view = cache.batch([seq], [known])
            logits.append(model(new, view.positions(new.shape[1]), view)[:, -1])
        out: list[list[int]] = [[] for _ in rows]
        reasons: list[FinishReason | None] = [None] * len(rows)
        active, last = list(range(len(rows))), torch.cat(logits)
        for step in range(max_new_tokens):
            tokens = choose(last, sampling, generator).tolist()
            still = []
            for i, t in zip(active, tokens, strict=True):
                out[i].append(t)
                if t in stops:
                    reasons[i] = "stop_token"
                elif step < max_new_tokens - 1:
                    still.append((i, t))
            if not still:
                break
            active = [i for i, _ in still]
            view = cache.append([seqs[i] for i in active], [t for _, t in still])
            ids = torch.tensor([[t] for _, t in still])
            last = model(ids, view.positions(1), view)[:, -1]
    finally:
        for seq in seqs:
            manager.release(seq)
    return [Generation(o, r or "max_tokens") for o, r in zip(out, reasons, strict=True)]
