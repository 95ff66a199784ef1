"""The course's default model: trained here on the Python standard library and shipped in the package.

Why ship it rather than build it on first use: training takes about five minutes on two cores, and the
notebooks and CI must not wait for that. The folder is 9 MB (4.2M parameters stored as float16) and
`make model` (`python -m common.llm.train --force`) reproduces it: the same Python, torch, seed and
thread count give the same bytes. `training.json` beside the weights records the recipe, the corpus's
digest, the loss curve and the held-out perplexity; `heldout_tokens.safetensors` holds the held-out ids
that perplexity was measured on (330 KB), so it can be checked, and variants compared, on any machine:
another Python's standard library is other text.

    model, tokenizer = load_default()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from common.llm.checkpoint import load_pretrained
from common.llm.corpus import load_token_ids
from common.llm.model import Decoder
from common.llm.tokenizer import load_tokenizer

DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
TRAINING_FILE = "training.json"
HELDOUT_FILE = "heldout_tokens.safetensors"


def default_training() -> dict[str, Any]:
    """What `training.json` records about the shipped model: recipe, corpus, losses, held-out perplexity."""
    path = DEFAULT_MODEL_DIR / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the default model with `make model`")
    return json.loads(path.read_text())


def load_default() -> tuple[Decoder, Tokenizer]:
    """The default decoder (float32, eval mode) and its byte-level BPE tokenizer."""
    return load_pretrained(DEFAULT_MODEL_DIR), load_tokenizer(DEFAULT_MODEL_DIR)


def default_heldout() -> torch.Tensor:
    """The held-out token ids (1-D int64) the recorded perplexity was measured on: the held-out stdlib
    files, tokenized, each preceded by `<|endoftext|>`, as training saw them."""
    path = DEFAULT_MODEL_DIR / HELDOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the default model with `make model`")
    return load_token_ids(path)
