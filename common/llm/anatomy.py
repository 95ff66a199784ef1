"""Where a decoder's time and memory go, counted from its config: parameters, KV bytes, FLOPs, bytes moved.

Why count rather than only time: the counts say which ceiling a forward pass meets. A decode step does
about 2 FLOPs per parameter per token but must read every weight once per step, so at batch 1 it does
~0.5 FLOP per byte (float32) and is bound by memory bandwidth; a 512-token prefill reads the same weights
once for 512 tokens and is bound by the matmul units. `forward_cost` gives both numbers so a notebook can
place each pass on the machine's roofline (common.bench.plot_roofline).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.llm.model import DecoderConfig

# The shapes (config.json fields) of checkpoints people run, copied from their Hugging Face configs, so
# their costs can be counted (and random models of their shape timed) with nothing downloaded.
CHECKPOINT_SHAPES: dict[str, dict] = {
    "SmolLM-135M": {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "max_position_embeddings": 2048, "tie_word_embeddings": True, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
    },
    "Qwen2.5-0.5B": {
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    },
    "Llama-3.1-8B": {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 131072, "tie_word_embeddings": False, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    },
}  # fmt: skip


@dataclass(frozen=True)
class ParameterCount:
    """Parameters by where they sit; `matmul` are those every token multiplies (the lm_head included)."""

    embedding: int
    attention: int
    mlp: int
    norms: int
    lm_head: int  # 0 when tied to the embedding (it is the same tensor)

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def matmul(self) -> int:
        """Weights multiplied by every token: the layers' projections and the output head (tied or not).
        The embedding is a lookup: a token reads one row of it, not the whole table."""
        return self.attention + self.mlp + self.embedding_head

    @property
    def embedding_head(self) -> int:
        return self.lm_head or self.embedding


def parameter_count(config: DecoderConfig) -> ParameterCount:
    """The decoder's parameters from its shape alone (equal to `sum(p.numel())` of the module)."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    attention = c.hidden_size * (q + 2 * kv) + q * c.hidden_size
    attention += (q + 2 * kv) * c.attention_bias + c.hidden_size * c.o_bias
    mlp = 3 * c.hidden_size * c.intermediate_size + (2 * c.intermediate_size + c.hidden_size) * c.mlp_bias
    layers = c.num_hidden_layers
    return ParameterCount(
        embedding=c.vocab_size * c.hidden_size,
        attention=layers * attention,
        mlp=layers * mlp,
        norms=(2 * layers + 1) * c.hidden_size,
        lm_head=0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size,
    )


def kv_bytes_per_token(config: DecoderConfig, bytes_per_element: int = 4) -> int:
    """What one token adds to the KV cache: a key and a value per layer per key-value head."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * bytes_per_element


@dataclass(frozen=True)
class ForwardCost:
    """One forward pass of `batch` rows, each adding `new_tokens` after `known` cached ones."""

    flops: float  # multiply-adds count 2
    weight_bytes: float  # every matmul weight read once, plus the embedding rows looked up
    kv_bytes: float  # the cache read (every key and value attended to) and written (the new ones)
    tokens: int  # batch * new_tokens: tokens whose logits this pass computes

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved: below the machine's ridge, bandwidth bounds the pass; above, compute."""
        return self.flops / self.bytes


def forward_cost(
    config: DecoderConfig,
    batch: int,
    new_tokens: int,
    known: int = 0,
    *,
    weight_bytes_per_param: float = 4,
    kv_bytes_per_element: int = 4,
) -> ForwardCost:
    """FLOPs and minimum bytes of one causal forward: prefill is `known=0, new_tokens=prompt`, a decode
    step is `new_tokens=1, known=tokens so far`. Activations are left out: at these sizes they stay in
    cache, and they are small beside the weights except in long prefills.

    `weight_bytes_per_param` is 4 for float32, 2 for float16, ~1 for int8 and ~0.5 for int4 (plus scales).
    """
    if batch < 1 or new_tokens < 1 or known < 0:
        raise ValueError(f"need batch >= 1, new_tokens >= 1, known >= 0; got {batch}, {new_tokens}, {known}")
    c = config
    params = parameter_count(c)
    tokens = batch * new_tokens
    # Causal: the i-th new token (0-based) attends to known + i + 1 keys.
    keys = batch * (new_tokens * known + new_tokens * (new_tokens + 1) // 2)
    attention = 2 * 2 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * keys  # QK^T and PV
    flops = 2 * params.matmul * tokens + attention
    weight_bytes = (params.matmul + tokens * c.hidden_size) * weight_bytes_per_param
    read = batch * (known + new_tokens) * kv_bytes_per_token(c, kv_bytes_per_element)
    written = tokens * kv_bytes_per_token(c, kv_bytes_per_element)
    return ForwardCost(float(flops), float(weight_bytes), float(read + written), tokens)


@dataclass(frozen=True)
class KVLayout:
    """What attention caches per token, and for how long: the KV-size reductions beyond grouped-query attention.

    - Grouped-query attention (GQA) stores a key and a value per key-value head: `2 * kv_heads * head_dim` per
      layer per token (multi-head attention is the case kv_heads == heads).
    - Sliding-window attention (Mistral 7B v0.1; Gemma 2 on every other layer) attends to the last `window`
      tokens only, so a windowed layer keeps at most `window` tokens of KV: only the global layers grow.
    - Multi-head latent attention (MLA, DeepSeek-V2, https://arxiv.org/abs/2405.04434) caches one compressed
      latent of `kv_lora_rank` and one rotary key of `rope_head_dim` per layer per token, shared by all heads;
      keys and values are projected back up from the latent (or the projection is folded into the query and
      output weights), trading extra FLOPs for far fewer bytes.
    """

    layers: int
    elements_per_layer: int  # what one token stores in one layer
    window: int | None = None  # tokens a windowed layer keeps
    windowed_layers: int = 0  # how many of `layers` use the window

    def __post_init__(self) -> None:
        if self.layers < 1 or self.elements_per_layer < 1:
            raise ValueError(
                f"need layers >= 1 and elements_per_layer >= 1; got {self.layers}, {self.elements_per_layer}"
            )
        if not 0 <= self.windowed_layers <= self.layers:
            raise ValueError(f"windowed_layers must be in [0, layers={self.layers}], got {self.windowed_layers}")
        if self.windowed_layers and (self.window is None or self.window < 1):
            raise ValueError(f"windowed layers need a window >= 1, got {self.window}")

    def bytes(self, tokens: int, bytes_per_element: float = 2) -> float:
        """The KV cache of one sequence of `tokens` tokens."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        kept = min(tokens, self.window) if self.window is not None else tokens
        global_layers = self.layers - self.windowed_layers
        return (global_layers * tokens + self.windowed_layers * kept) * self.elements_per_layer * bytes_per_element

    def bytes_per_token(self, tokens: int, bytes_per_element: float = 2) -> float:
        """The cache of a `tokens`-long sequence divided by its length: constant for GQA and MLA; falling past
        the window for sliding-window layers."""
        return self.bytes(tokens, bytes_per_element) / tokens


def gqa_layout(config: DecoderConfig, window: int | None = None, windowed_layers: int | None = None) -> KVLayout:
    """The layout of a config's grouped-query attention; with `window`, `windowed_layers` of its layers
    (all by default) slide."""
    per_layer = 2 * config.num_key_value_heads * config.head_dim
    if window is None:
        return KVLayout(config.num_hidden_layers, per_layer)
    slide = config.num_hidden_layers if windowed_layers is None else windowed_layers
    return KVLayout(config.num_hidden_layers, per_layer, window, slide)


def mla_layout(layers: int, kv_lora_rank: int, rope_head_dim: int) -> KVLayout:
    """Multi-head latent attention: a latent and a shared rotary key per layer per token, whatever the heads."""
    return KVLayout(layers, kv_lora_rank + rope_head_dim)


def _shape(**fields: object) -> DecoderConfig:
    return DecoderConfig.from_hf({"architectures": ["LlamaForCausalLM"], "vocab_size": 32000, **fields})


# Published shapes (their Hugging Face config.json fields; the attention only: the MLP does not touch the cache).
# DeepSeek-V2 has 128 heads of 128 dimensions: as multi-head attention it would store 2 * 128 * 128 per layer.
KV_LAYOUTS: dict[str, KVLayout] = {
    "Llama-3.1-8B (GQA, 8 of 32 heads)": gqa_layout(DecoderConfig.from_hf(CHECKPOINT_SHAPES["Llama-3.1-8B"])),
    "Mistral-7B-v0.1 (GQA, window 4,096)": gqa_layout(
        _shape(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=32768),
        window=4096,
    ),
    "Gemma-2-9B (GQA, window 4,096 on half the layers)": KVLayout(42, 2 * 8 * 256, window=4096, windowed_layers=21),
    "DeepSeek-V2 as multi-head attention": KVLayout(60, 2 * 128 * 128),
    "DeepSeek-V2 (MLA)": mla_layout(60, kv_lora_rank=512, rope_head_dim=64),
}  # fmt: skip
