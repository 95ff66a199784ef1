"""LLM inference, module 07: a Llama-family decoder that loads Hugging Face checkpoints (`load_pretrained`),
the small model the course trains itself (`load_default`), KV caches, sampling and generation.

Quantisation lives in `common.llm.quantize` (it imports the Numba kernels, which take a moment).
Depends on torch, safetensors, tokenizers, `common.kernels` and (to refuse pickles) `common.secure` only
(DESIGN.md).
"""

from common.llm.cache import StaticCache
from common.llm.checkpoint import CheckpointError, load_pretrained, save_pretrained
from common.llm.default import default_training, load_default
from common.llm.evaluate import perplexity
from common.llm.generate import Generation, Sampling, generate
from common.llm.model import Decoder, DecoderConfig, UnsupportedModel
from common.llm.paged import BlockManager, PagedKVCache, reservation
from common.llm.tokenizer import load_tokenizer
from common.secure.errors import UnsafeFormat  # what load_pretrained raises for a pickle checkpoint

__all__ = [
    "BlockManager",
    "CheckpointError",
    "Decoder",
    "DecoderConfig",
    "Generation",
    "PagedKVCache",
    "Sampling",
    "StaticCache",
    "UnsafeFormat",
    "UnsupportedModel",
    "default_training",
    "generate",
    "load_default",
    "load_pretrained",
    "load_tokenizer",
    "perplexity",
    "reservation",
    "save_pretrained",
]
