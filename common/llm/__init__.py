"""LLM inference, module 07: a Llama-family decoder that loads Hugging Face checkpoints (`load_pretrained`).

Depends on torch, safetensors and nothing above it in `common` (DESIGN.md).
"""

from common.llm.checkpoint import CheckpointError, UnsafeCheckpoint, load_pretrained
from common.llm.model import Decoder, DecoderConfig, UnsupportedModel

__all__ = ["CheckpointError", "Decoder", "DecoderConfig", "UnsafeCheckpoint", "UnsupportedModel", "load_pretrained"]
