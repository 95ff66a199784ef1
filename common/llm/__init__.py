"""LLM inference, module 07: a Llama-family decoder that loads Hugging Face checkpoints (`load_pretrained`),
the small model the course trains itself (`load_default`), KV caches, sampling and generation.

Quantisation lives in `common.llm.quantize` (it imports the Numba kernels, which take a moment).
Depends on torch, safetensors, tokenizers and `common.kernels` only (DESIGN.md).
"""

from common.llm.cache import StaticCache
from common.llm.checkpoint import CheckpointError, UnsafeCheckpoint, load_pretrained, save_pretrained
from common.llm.default import default_training, load_default
from common.llm.evaluate import perplexity
from common.llm.generate import Generation, Sampling, generate
from common.llm.model import Decoder, DecoderConfig, UnsupportedModel
from common.llm.paged import BlockManager, PagedKVCache, reservation
from common.llm.tokenizer import load_tokenizer

__all__ = [
    "BlockManager",
    "CheckpointError",
    "Decoder",
    "DecoderConfig",
    "Generation",
    "PagedKVCache",
    "Sampling",
    "StaticCache",
    "UnsafeCheckpoint",
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
