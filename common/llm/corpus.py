"""The corpus every machine has: the Python standard library's own source, split by file into train and held-out.

Why this corpus: the course trains its default model offline, and the standard library is real code that
every Python installation ships. Files are sorted and every `heldout_every`-th one is held out, so the
split is the same wherever the files are the same; a digest over every path and byte names the corpus a
model saw (it differs between Python versions).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from common.llm.tokenizer import TokenizerLike, eos_id

# Not code a learner would write, or not the standard library: the test suites (half the stdlib), IDLE,
# installed packages, generated codec tables (encodings/cp*.py are 256-entry string literals) and the
# help topics (pydoc_data/topics.py is one 700 KB string).
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "encodings", "pydoc_data"}
)
HELDOUT_EVERY = 20


@dataclass(frozen=True)
class Corpus:
    """Source files split by file into train and held-out, with a digest of every path and byte."""

    root: Path
    train_files: tuple[str, ...]  # paths relative to root, sorted
    heldout_files: tuple[str, ...]
    train_texts: tuple[str, ...] = field(repr=False)
    heldout_texts: tuple[str, ...] = field(repr=False)
    digest: str  # sha256 over (relative path, file bytes) of both splits: names the corpus a model saw
    heldout_every: int = HELDOUT_EVERY

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "digest": self.digest,
            "python_version": platform.python_version(),
            "train_files": len(self.train_files),
            "heldout_files": len(self.heldout_files),
            "train_chars": sum(map(len, self.train_texts)),
            "heldout_chars": sum(map(len, self.heldout_texts)),
            "heldout_every": self.heldout_every,
            "excluded_dirs": sorted(EXCLUDED_DIRS),
        }


def python_files(root: str | os.PathLike[str], excluded_dirs: frozenset[str] = EXCLUDED_DIRS) -> list[str]:
    """Every `.py` under `root` outside `excluded_dirs`, relative, in a fixed (sorted POSIX path) order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} is not a directory")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in excluded_dirs]  # pruned, not walked: site-packages can be huge
        rel = Path(folder).relative_to(root)
        found += [(rel / name).as_posix() for name in files if name.endswith(".py")]
    return sorted(found)


def stdlib_corpus(
    root: str | os.PathLike[str] | None = None, *, heldout_every: int = HELDOUT_EVERY, max_files: int | None = None
) -> Corpus:
    """The standard library's own source (or any folder of `.py` files), every `heldout_every`-th file
    held out for perplexity. `max_files` keeps the first files only, for quick tests.

    The exact files differ between Python versions, so a model records this corpus's digest and the
    Python version it was trained on.
    """
    if heldout_every < 2:
        raise ValueError(f"heldout_every must be >= 2 (1 would hold out every file), got {heldout_every}")
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be a positive number of files or None (all), got {max_files}")
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = python_files(root)[:max_files]
    heldout = [i % heldout_every == heldout_every - 1 for i in range(len(files))]
    if not any(heldout) or all(heldout):
        raise ValueError(
            f"{root} gives {len(files)} .py files: too few to hold out every {heldout_every}th and still train; "
            f"need at least {heldout_every} files (or a smaller heldout_every)"
        )
    digest = hashlib.sha256()
    texts = []
    for rel in files:
        path = root / rel
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        try:
            with tokenize.open(path) as f:  # honours a file's coding cookie, as Python itself does
                texts.append(f.read())
        except (SyntaxError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not readable Python source: {exc}") from None
    return Corpus(
        root=root,
        train_files=tuple(f for f, h in zip(files, heldout, strict=True) if not h),
        heldout_files=tuple(f for f, h in zip(files, heldout, strict=True) if h),
        train_texts=tuple(t for t, h in zip(texts, heldout, strict=True) if not h),
        heldout_texts=tuple(t for t, h in zip(texts, heldout, strict=True) if h),
        digest=digest.hexdigest(),
        heldout_every=heldout_every,
    )


def token_stream(tokenizer: TokenizerLike, texts: Sequence[str]) -> torch.Tensor:
    """All texts as one 1-D id tensor, each document preceded by `<|endoftext|>`, so the model learns
    where a file starts and a prompt can begin with that token (as GPT-2 separates documents)."""
    eos = torch.tensor([eos_id(tokenizer)])
    pieces = []
    for i in range(0, len(texts), 64):  # in chunks: an Encoding per token costs far more than its id
        for encoding in tokenizer.encode_batch(list(texts[i : i + 64]), add_special_tokens=False):
            pieces += [eos, torch.tensor(encoding.ids, dtype=torch.int64)]
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int64)


TOKEN_IDS = "ids"  # the one tensor in a token-id file


def save_token_ids(tokens: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a 1-D id stream as a safetensors file of uint16 (2 bytes a token: a vocabulary up to 65,536
    fits), so a measurement can be repeated on exactly these ids wherever the texts they came from differ."""
    if tokens.dim() != 1 or tokens.is_floating_point():
        raise ValueError(f"token ids must be a 1-D integer tensor, got {tokens.dtype} of shape {tuple(tokens.shape)}")
    if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < 2**16:
        raise ValueError(
            f"token ids must lie in [0, 65536) to be stored as uint16, got {int(tokens.min())}..{int(tokens.max())}"
        )
    path = Path(path)
    safetensors.torch.save_file({TOKEN_IDS: tokens.to(torch.uint16).contiguous()}, str(path))
    return path


def load_token_ids(path: str | os.PathLike[str]) -> torch.Tensor:
    """The 1-D int64 id stream `save_token_ids` wrote (int64: what embeddings and losses index with)."""
    tensors = safetensors.torch.load_file(str(path))
    if set(tensors) != {TOKEN_IDS} or tensors[TOKEN_IDS].dim() != 1:
        raise ValueError(f"{path} is not a token-id file: expected one 1-D tensor named {TOKEN_IDS!r}")
    return tensors[TOKEN_IDS].to(torch.int64)
