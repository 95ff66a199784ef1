"""The course's default model: trained once on this machine (a few minutes), cached, then loaded by name.

Why build instead of download: the course runs with no internet after setup, and the model is trained on
the standard library of the Python it runs on (common.llm.train). The cache folder's name carries a digest
of the recipe and the corpus, so a different Python (different stdlib files) or a changed recipe builds a
new model beside the old one instead of loading a model that no longer matches its record.

    model, tokenizer = load_default()   # builds on first use, then loads in well under a second
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from tokenizers import Tokenizer

from common.llm.checkpoint import load_pretrained
from common.llm.model import Decoder
from common.llm.tokenizer import load_tokenizer
from common.llm.train import TRAINING_FILE, Corpus, Recipe, build, stdlib_corpus

CACHE_ENV = "HPAI_CACHE"  # the course's cache root; the default model lives in $HPAI_CACHE/llm/
DEFAULT_RECIPE = Recipe()
FORMAT = 1  # bump when the trainer changes what the same recipe and corpus produce


def cache_root() -> Path:
    """`$HPAI_CACHE`, or `~/.cache/hpai`: where the course keeps what it builds."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "hpai"


def model_digest(recipe: Recipe = DEFAULT_RECIPE, corpus: Corpus | None = None) -> str:
    """12 hex digits naming what decides the weights: the trainer's format, the recipe and the corpus."""
    corpus = corpus or stdlib_corpus()
    identity = {"format": FORMAT, "recipe": asdict(recipe), "corpus": corpus.digest, "split": corpus.heldout_every}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def default_model_dir(*, recipe: Recipe = DEFAULT_RECIPE, corpus: Corpus | None = None) -> Path:
    """Where the default model is (or will be) cached: `<cache root>/llm/default-<digest>`."""
    return cache_root() / "llm" / f"default-{model_digest(recipe, corpus)}"


def ensure_default_model(
    progress: bool = True, *, recipe: Recipe = DEFAULT_RECIPE, corpus: Corpus | None = None
) -> Path:
    """The default model's folder, trained first if it is not cached (about 5 minutes on two cores).

    The build writes a temporary folder and renames it into place, so a folder that exists is complete;
    if two processes build at once, the second to finish uses the first one's model.
    """
    corpus = corpus or stdlib_corpus()
    folder = default_model_dir(recipe=recipe, corpus=corpus)
    if (folder / TRAINING_FILE).is_file():
        return folder
    if progress:
        print(f"building the default model once (a few minutes), cached in {folder}", file=sys.stderr)
    try:
        # a folder without training.json was not made by build (which renames only complete folders)
        build(folder, recipe, corpus, progress=progress, overwrite=folder.exists())
    except OSError:
        if not (folder / TRAINING_FILE).is_file():  # not a lost race with another builder: a real failure
            raise
    return folder


def load_default(progress: bool = True) -> tuple[Decoder, Tokenizer]:
    """The default decoder (float32, eval mode) and its tokenizer, building them first if needed."""
    folder = ensure_default_model(progress)
    return load_pretrained(folder), load_tokenizer(folder)
