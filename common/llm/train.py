"""Train the course's default model: a small Llama-style `Decoder`, from scratch, on Python's own source.

Why train one: module 07 needs a real model to measure (KV caches, batching, speculative decoding,
quantisation vs perplexity) on a laptop with no GPU and no internet after setup. The Python standard
library is the one corpus every machine already has, it is real code, and a few minutes on two CPU cores
teach a 4M-parameter model enough to write things that look like Python.

The pipeline, one function a step: `stdlib_corpus` (common.llm.corpus), `train_tokenizer` (byte-level
BPE, common.llm.tokenizer), `train` (here: AdamW, warmup then cosine, seeded and deterministic),
`save_pretrained` (common.llm.checkpoint: a folder `load_pretrained` and `transformers` both read) and
held-out perplexity (common.llm.evaluate, on the weights as saved, and the held-out ids saved beside
them). `build` runs them all and writes `training.json` with the figures; `python -m common.llm.train` is its command line, and `make model`
rebuilds the model the repository ships (common/llm/default_model) with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.llm.checkpoint import DTYPES, WeightDtype, load_pretrained, save_pretrained
from common.llm.corpus import HELDOUT_EVERY, Corpus, save_token_ids, stdlib_corpus, token_stream
from common.llm.default import DEFAULT_MODEL_DIR, HELDOUT_FILE, TRAINING_FILE
from common.llm.evaluate import total_nll
from common.llm.model import Decoder, DecoderConfig
from common.llm.tokenizer import train_tokenizer

# ---------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (with the corpus and the seed).

    The default takes about 5 minutes on two CPU cores: a 4.2M-parameter model (1M of them the tied
    embedding) sees 1M tokens, under half an epoch of the standard library. That is far from converged:
    in this budget the loss is still falling fast, and a bigger batch, a higher learning rate, a shorter
    warmup or a smaller model (2.4M) each measured no better at equal time.
    """

    steps: int = 1000
    batch_size: int = 4  # small batches, more steps: in a budget this short, updates matter more than batch
    context: int = 256
    lr: float = 2e-3
    min_lr: float = 2e-4  # the cosine ends here, not at 0: the last steps still learn
    warmup: float = 0.1  # fraction of steps with a linearly rising learning rate; shorter diverged early
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 768
    init_std: float = 0.05  # above GPT-2's 0.02: at this width and budget it learned faster (measured)
    dtype: WeightDtype = "float16"  # how the weights are stored; perplexity is measured on the stored weights

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "context", "hidden_size", "num_layers", "num_heads", "num_kv_heads")
        for name in (*positive, "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.context < 2:
            raise ValueError(f"context must be >= 2 tokens (one to read, one to predict), got {self.context}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"learning rates must satisfy 0 < min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps, in [0, 1), got {self.warmup}")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.init_std <= 0:
            raise ValueError("weight_decay must be >= 0, grad_clip and init_std > 0")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size} must split into {self.num_heads} heads of an even size "
                "(rotary positions rotate pairs of features)"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def decoder_config(self, vocab_size: int) -> DecoderConfig:
        """The model shape; `vocab_size` is the tokenizer's actual size (a tiny corpus may give fewer)."""
        return DecoderConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.hidden_size // self.num_heads,
            max_position_embeddings=self.context,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,  # the embedding is a quarter of the model; tying halves that cost
        )

    def lr_at(self, step: int) -> float:
        """Linear warmup (from lr / warmup_steps) to `lr`, then a cosine down to `min_lr` at the last step."""
        warmup = max(1, round(self.warmup * self.steps)) if self.warmup else 0
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - 1 - warmup)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- training


def init_weights(model: Decoder, seed: int, std: float = 0.02) -> None:
    """GPT-2's initialisation: weights N(0, std), the two projections into the residual stream scaled by
    1/sqrt(2 * layers) so the residual's variance does not grow with depth; norms 1, biases 0."""
    generator = torch.Generator().manual_seed(seed)
    residual_std = std / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is the embedding, listed once
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                into_residual = name.endswith(("o_proj.weight", "down_proj.weight"))
                p.normal_(0.0, residual_std if into_residual else std, generator=generator)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration (restored after, so a notebook's later cells are unaffected).
    The same seed, corpus, torch version and thread count then give the same weights, bit for bit."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@dataclass
class TrainResult:
    model: Decoder
    losses: list[float]
    seconds: float
    tokens_seen: int


def train(tokens: torch.Tensor, vocab_size: int, recipe: Recipe = Recipe(), *, progress: bool = True) -> TrainResult:
    """Train a fresh decoder on random windows of `tokens` (a 1-D id stream) for `recipe.steps` steps."""
    if tokens.dim() != 1 or tokens.numel() < recipe.context + 2:
        raise ValueError(
            f"tokens must be a 1-D stream longer than the context ({recipe.context} + 1), got shape {tuple(tokens.shape)}"
        )
    if int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {vocab_size}")
    with deterministic():
        model = Decoder(recipe.decoder_config(vocab_size))
        init_weights(model, recipe.seed, recipe.init_std)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]  # norm gains: decaying them fights the norm
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr,
            betas=(0.9, 0.95),
        )
        sampler = torch.Generator().manual_seed(recipe.seed + 1)
        window = torch.arange(recipe.context + 1)
        losses: list[float] = []
        model.train()
        start = time.perf_counter()
        bar = tqdm(range(recipe.steps), desc="training", unit="step", disable=not progress, dynamic_ncols=True)
        for step in bar:
            starts = torch.randint(0, tokens.numel() - recipe.context - 1, (recipe.batch_size, 1), generator=sampler)
            batch = tokens[starts + window]
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), batch[:, 1:].reshape(-1))
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"loss became {losses[-1]} at step {step}: lower the learning rate")
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
    return TrainResult(model.eval(), losses, seconds, recipe.steps * recipe.batch_size * recipe.context)


# ---------------------------------------------------------------- the whole build


def build(
    out: str | os.PathLike[str],
    recipe: Recipe = Recipe(),
    corpus: Corpus | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Corpus -> tokenizer -> training -> saved folder -> held-out perplexity -> `training.json`.

    Built in a hidden temporary folder beside `out` and renamed into place, so `out` is either absent or
    complete: an interrupted build never leaves a half-written model where a load would find it. An
    existing `out` is an error unless `overwrite`. Returns the `training.json` summary.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        summary = _build_into(tmp, recipe, corpus, progress)
        for path in (*tmp.iterdir(), tmp):  # mkdtemp makes it private (0700); a model folder is readable
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():  # overwrite: move the old one aside first, so `out` is never half-written
            old = tmp.with_suffix(".old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)  # raises if another process finished first; the caller may use theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def loss_summary(losses: Sequence[float], points: int = 20) -> dict[str, Any]:
    """The first loss, the mean of the last tenth (one batch is noisy) and a curve of `points` means."""
    tail = losses[-max(1, len(losses) // 10) :]
    points = min(points, len(losses))
    edges = [round(i * len(losses) / points) for i in range(points + 1)]
    curve = [[edges[i + 1], sum(losses[edges[i] : edges[i + 1]]) / (edges[i + 1] - edges[i])] for i in range(points)]
    return {"first": losses[0], "last": sum(tail) / len(tail), "curve": curve}


def _log(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


def _build_into(folder: Path, recipe: Recipe, corpus: Corpus | None, progress: bool) -> dict[str, Any]:
    began = time.perf_counter()
    corpus = corpus or stdlib_corpus()
    _log(progress, f"corpus: {len(corpus.train_files)} + {len(corpus.heldout_files)} held-out files, {corpus.root}")
    tokenizer = train_tokenizer(corpus.train_texts, recipe.vocab_size)
    train_tokens = token_stream(tokenizer, corpus.train_texts)
    heldout_tokens = token_stream(tokenizer, corpus.heldout_texts)
    tokenizer_seconds = time.perf_counter() - began
    _log(progress, f"tokenizer: {tokenizer.get_vocab_size()} tokens; {train_tokens.numel():,} to train on")
    result = train(train_tokens, tokenizer.get_vocab_size(), recipe, progress=progress)
    save_pretrained(result.model, tokenizer, folder, recipe.dtype)
    save_token_ids(heldout_tokens, folder / HELDOUT_FILE)  # the perplexity below can be rechecked on these ids
    began_eval = time.perf_counter()
    saved = load_pretrained(folder)  # measured as saved: the storage dtype's rounding included
    nll, predicted = total_nll(saved, heldout_tokens, recipe.context, 16)
    eval_seconds = time.perf_counter() - began_eval
    heldout_bytes = sum(len(t.encode()) for t in corpus.heldout_texts)
    summary: dict[str, Any] = {
        "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in saved.parameters()),
        "steps": recipe.steps,
        "tokens_seen": result.tokens_seen,
        "train_tokens": train_tokens.numel(),
        "epochs": round(result.tokens_seen / train_tokens.numel(), 3),
        "loss": loss_summary(result.losses),
        "heldout": {
            "perplexity": math.exp(nll / predicted),
            "bits_per_byte": nll / math.log(2) / heldout_bytes,  # tokenizer-independent: compare across vocabularies
            "tokens": heldout_tokens.numel(),
            "files": len(corpus.heldout_files),
        },
        "corpus": corpus.describe(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "threads": torch.get_num_threads(),
        "seconds": {
            "tokenizer": round(tokenizer_seconds, 2),
            "train": round(result.seconds, 2),
            "eval": round(eval_seconds, 2),
            "total": round(time.perf_counter() - began, 2),
        },
        "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir())},
    }
    (folder / TRAINING_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    heldout = summary["heldout"]
    _log(progress, f"held-out perplexity {heldout['perplexity']:.2f} ({heldout['bits_per_byte']:.3f} bits/byte)")
    return summary


# ---------------------------------------------------------------- command line


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: `kind(text)`, which must be finite and > 0 (the message names what was given)."""
    name = "integer" if kind is int else "number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {name}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {name}, got {value}")
        return value

    return parse


_positive_int, _positive_float = _positive(int), _positive(float)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m common.llm.train`: build the default model (into the cache unless --out is given)."""
    d = Recipe()
    parser = argparse.ArgumentParser(
        prog="python -m common.llm.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=argparse.SUPPRESS,
        help="the model folder to write [default: the shipped common/llm/default_model, with --force]",
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--steps", type=_positive_int, default=d.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="sequences per step")
    parser.add_argument("--context", type=_positive_int, default=d.context, help="tokens per sequence")
    parser.add_argument("--lr", type=_positive_float, default=d.lr, help="peak learning rate")
    parser.add_argument("--min-lr", type=_positive_float, default=d.min_lr, help="learning rate at the last step")
    parser.add_argument("--seed", type=int, default=d.seed, help="initial weights and batch order")
    parser.add_argument("--dtype", choices=list(DTYPES), default=d.dtype, help="storage dtype of the weights")
    parser.add_argument(
        "--max-files", type=_positive_int, default=argparse.SUPPRESS, help="use the first N files only [default: all]"
    )
    parser.add_argument("--heldout-every", type=_positive_int, default=HELDOUT_EVERY, help="hold out every Nth file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        recipe = Recipe(
            steps=args.steps,
            batch_size=args.batch_size,
            context=args.context,
            lr=args.lr,
            min_lr=args.min_lr,
            seed=args.seed,
            dtype=args.dtype,
        )
        corpus = stdlib_corpus(heldout_every=args.heldout_every, max_files=getattr(args, "max_files", None))
    except ValueError as exc:
        parser.error(str(exc))
    out = getattr(args, "out", None) or DEFAULT_MODEL_DIR
    try:
        summary = build(out, recipe, corpus, progress=not args.quiet, overwrite=args.force)
    except FileExistsError as exc:
        parser.error(str(exc))
    print(
        f"{out}: {summary['parameters']:,} parameters, {summary['steps']} steps in {summary['seconds']['train']:.0f} s, "
        f"loss {summary['loss']['first']:.2f} -> {summary['loss']['last']:.2f}, "
        f"held-out perplexity {summary['heldout']['perplexity']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
