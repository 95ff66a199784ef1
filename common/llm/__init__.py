"""LLM inference, module 07: a Llama-family decoder that loads Hugging Face checkpoints (`load_pretrained`),
the small model the course trains itself (`load_default`), KV caches, sampling and generation.

Weight-only quantisation (`quantize`) runs on the module 02 Numba kernels, imported when a model is first
quantised (Numba takes a second to import). `quantisation_table` and `step_seconds` time decode steps.
Depends on torch, safetensors, tokenizers, `common.kernels` and (to refuse pickles) `common.secure` only
(DESIGN.md).
"""

from common.llm.anatomy import (
    CHECKPOINT_SHAPES,
    KV_LAYOUTS,
    KVLayout,
    forward_cost,
    gqa_layout,
    kv_bytes_per_token,
    mla_layout,
    parameter_count,
)
from common.llm.cache import StaticCache
from common.llm.checkpoint import CheckpointError, WeightDtype, load_pretrained, save_pretrained
from common.llm.corpus import Corpus, load_token_ids, save_token_ids, stdlib_corpus, token_stream
from common.llm.default import default_heldout, default_training, load_default
from common.llm.evaluate import perplexity
from common.llm.generate import FinishReason, Generation, Sampling, generate, generate_paged
from common.llm.model import Decoder, DecoderConfig, UnsupportedModel
from common.llm.paged import BlockManager, OutOfBlocks, PagedKVCache, reservation
from common.llm.profile import Mode, quantisation_table, step_seconds
from common.llm.quantize import QuantizedLinear, Scheme, Variant, quantize, read_bytes_per_token, variant, weight_bytes
from common.llm.tokenizer import Detokenizer, TokenizerLike, load_tokenizer, save_tokenizer, train_tokenizer
from common.secure.errors import UnsafeFormat  # what load_pretrained raises for a pickle checkpoint

__all__ = [
    "CHECKPOINT_SHAPES",
    "KV_LAYOUTS",
    "BlockManager",
    "CheckpointError",
    "Corpus",
    "Decoder",
    "DecoderConfig",
    "Detokenizer",
    "FinishReason",
    "Generation",
    "KVLayout",
    "Mode",
    "OutOfBlocks",
    "PagedKVCache",
    "QuantizedLinear",
    "Sampling",
    "Scheme",
    "StaticCache",
    "TokenizerLike",
    "UnsafeFormat",
    "UnsupportedModel",
    "Variant",
    "WeightDtype",
    "default_heldout",
    "default_training",
    "forward_cost",
    "generate",
    "generate_paged",
    "gqa_layout",
    "kv_bytes_per_token",
    "load_default",
    "load_pretrained",
    "load_token_ids",
    "load_tokenizer",
    "mla_layout",
    "parameter_count",
    "perplexity",
    "quantisation_table",
    "quantize",
    "read_bytes_per_token",
    "reservation",
    "save_pretrained",
    "save_token_ids",
    "save_tokenizer",
    "stdlib_corpus",
    "step_seconds",
    "token_stream",
    "train_tokenizer",
    "variant",
    "weight_bytes",
]
