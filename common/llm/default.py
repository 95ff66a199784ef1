"""The course's default model: trained here on the Python standard library and shipped in the package.

Why ship it rather than build it on first use: training takes about five minutes on two cores, and the
notebooks and CI must not wait for that. The folder is 9 MB (4.2M parameters stored as float16) and
`make model` (`python -m common.llm.train --force`) reproduces it: the same Python, torch, seed and
thread count give the same bytes. `training.json` beside the weights records the recipe, the corpus's
digest, the loss curve and the held-out perplexity.

    model, tokenizer = load_default()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from common.llm.checkpoint import load_pretrained
from common.llm.model import Decoder
from common.llm.tokenizer import load_tokenizer

DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
TRAINING_FILE = "training.json"


def default_training() -> dict[str, Any]:
    """What `training.json` records about the shipped model: recipe, corpus, losses, held-out perplexity."""
    path = DEFAULT_MODEL_DIR / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the default model with `make model`")
    return json.loads(path.read_text())


def load_default() -> tuple[Decoder, Tokenizer]:
    """The default decoder (float32, eval mode) and its byte-level BPE tokenizer."""
    return load_pretrained(DEFAULT_MODEL_DIR), load_tokenizer(DEFAULT_MODEL_DIR)
