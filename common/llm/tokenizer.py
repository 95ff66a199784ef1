"""A byte-level BPE tokenizer, trained here with Hugging Face `tokenizers` and saved as `tokenizer.json`.

Why byte-level: the base alphabet is the 256 byte values, so every string (any language, any whitespace,
emoji, control characters) encodes to ids and decodes back to exactly itself; BPE merges only make common
byte runs (`def`, `self`, four-space indents) one token. Why train our own: the course builds its default
model from nothing that needs a download, and a small vocabulary (4096) keeps that model small.

The saved file is the one format both libraries read: `tokenizers.Tokenizer.from_file("tokenizer.json")`
and `transformers.PreTrainedTokenizerFast(tokenizer_file="tokenizer.json")` (or `AutoTokenizer` on the
folder, which `save_tokenizer` makes loadable with a `tokenizer_config.json`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS = "<|endoftext|>"  # separates documents in training; also what generation stops on
SPECIAL_TOKENS = (EOS,)
BYTES = 256  # the byte-level base alphabet: every byte value has a token
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


class Encoded(Protocol):
    """One encoded text: what `common.llm` reads of a `tokenizers.Encoding` is its ids."""

    @property
    def ids(self) -> list[int]: ...


class Detokenizer(Protocol):
    """What generation needs of a tokenizer: ids back to text (for the returned text and stop strings)."""

    def decode(self, ids: Sequence[int], /) -> str: ...


class TokenizerLike(Detokenizer, Protocol):
    """What `common.llm` calls on a tokenizer, so a `tokenizers.Tokenizer` (what `load_tokenizer` returns)
    and a test's stand-in both fit: text to ids, a batch of texts to ids, ids to text, a token's id."""

    def encode(self, sequence: str, /) -> Encoded: ...

    def encode_batch(self, input: Sequence[str], /, *, add_special_tokens: bool = ...) -> Sequence[Encoded]: ...

    def token_to_id(self, token: str, /) -> int | None: ...


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, *, min_frequency: int = 2, max_token_length: int | None = 16
) -> Tokenizer:
    """A byte-level BPE tokenizer learned from `texts`; the same texts in the same order give the same
    `tokenizer.json`, byte for byte (so a corpus digest identifies the tokenizer too).

    `vocab_size` counts the special tokens and the 256 byte tokens; the rest are merges. A corpus too
    small to find that many merges yields a smaller vocabulary (check `get_vocab_size()`).
    `max_token_length` stops merges growing into whole lines of a repeated literal.
    """
    least = len(SPECIAL_TOKENS) + BYTES
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < least:
        raise ValueError(
            f"vocab_size must be an int >= {least} (the special tokens plus the 256 byte tokens), got {vocab_size!r}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1 (a merge seen fewer times is never learned), got {min_frequency}")
    tokenizer = Tokenizer(models.BPE())
    # GPT-2's split (words, numbers, punctuation runs, whitespace runs) before BPE, so merges never span a
    # word boundary; no prefix space, so decode(encode(text)) == text with nothing to strip.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
        max_token_length=max_token_length,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_checked(texts), trainer=trainer)
    return tokenizer


def _checked(texts: Iterable[str]) -> Iterator[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings (documents), not one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must hold strings; item {i} is a {type(text).__name__}")
        yield text


def save_tokenizer(tokenizer: Tokenizer, folder: str | os.PathLike[str], *, model_max_length: int = 256) -> Path:
    """Write `tokenizer.json` plus the `tokenizer_config.json` that lets `transformers.AutoTokenizer`
    load the folder (it names the class and which token is end-of-text). Returns the tokenizer.json path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TOKENIZER_FILE
    tokenizer.save(str(path))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": None,  # byte-level: nothing is ever unknown
        "pad_token": EOS,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # would rewrite " ." to "." and break the round trip
        "model_max_length": model_max_length,
    }
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer from `tokenizer.json` or from the folder that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}: expected a {TOKENIZER_FILE} (or a folder holding one)")
    return Tokenizer.from_file(str(path))


def eos_id(tokenizer: TokenizerLike) -> int:
    """The id of `<|endoftext|>`; an error if the tokenizer was not made by `train_tokenizer`."""
    token_id = tokenizer.token_to_id(EOS)
    if token_id is None:
        raise ValueError(f"this tokenizer has no {EOS} token; train it with common.llm.tokenizer.train_tokenizer")
    return token_id
