"""A Llama-family decoder (Llama, Mistral-style GQA, Qwen2) that loads Hugging Face checkpoints.

Why write it when `transformers` has one: this is the engine core the course teaches and later optimises
(KV caches, paged attention, quantisation, compiled decode steps), and it must stay small enough to read
in one sitting. It is held equal to `transformers`' `LlamaForCausalLM` and `Qwen2ForCausalLM` by the tests,
so real checkpoints (SmolLM, TinyLlama, Qwen2.5) load into it unchanged.

The parts, in the order a token meets them: token embedding; per layer, RMSNorm, attention with rotary
position embeddings and grouped-query heads (several query heads share one key/value head), a residual
add, RMSNorm, a SwiGLU MLP, a residual add; a final RMSNorm; the output projection (optionally the
embedding matrix itself: tied embeddings). Parameter names are Hugging Face's, so a checkpoint's state
dict loads without renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


class UnsupportedModel(ValueError):
    """A checkpoint whose architecture or options this decoder does not implement."""


@dataclass(frozen=True)
class DecoderConfig:
    """The shape of a decoder, read from a Hugging Face `config.json` (`from_hf`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # {"rope_type": ..., "factor": ..., ...}
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections with bias (Qwen2 always; Llama if configured)
    o_bias: bool = False  # the output projection with bias (Llama's attention_bias; never in Qwen2)
    mlp_bias: bool = False
    architecture: str = "LlamaForCausalLM"

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedModel(
                f"{self.num_attention_heads} attention heads do not split into {self.num_key_value_heads} "
                "key/value groups: grouped-query attention needs a whole number of query heads per group"
            )
        kind = self.rope_scaling.get("rope_type", "default")
        if kind not in ROPE_TYPES:
            raise UnsupportedModel(f"rope scaling {kind!r} is not implemented; supported: {', '.join(ROPE_TYPES)}")

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, config: dict[str, Any], where: str = "config.json") -> DecoderConfig:
        """Read a Hugging Face config (transformers 4 or 5 layout); UnsupportedModel names what is not
        supported, KeyError/ValueError name a missing or malformed field."""
        architectures = config.get("architectures") or []
        arch = next((a for a in architectures if a in ARCHITECTURES), None)
        if arch is None:
            model_type = config.get("model_type")
            arch = next((a for a, t in ARCHITECTURES.items() if t == model_type), None)
        if arch is None:
            found = architectures or [config.get("model_type", "nothing")]
            raise UnsupportedModel(
                f"{where}: architecture {', '.join(map(str, found))} is not supported; "
                f"this decoder loads {', '.join(ARCHITECTURES)}"
            )
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
            theta = float(rope.pop("rope_theta", config.get("rope_theta", 10_000.0)))
            if "type" in rope and "rope_type" not in rope:  # transformers 4's older spelling
                rope["rope_type"] = rope.pop("type")
            if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
                raise UnsupportedModel(f"{where}: partial_rotary_factor != 1 is not supported")
            if config.get("use_sliding_window") and arch != "MistralForCausalLM":
                raise UnsupportedModel(f"{where}: sliding-window attention is not supported")
            qwen = arch == "Qwen2ForCausalLM"
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(config["intermediate_size"]),
                num_hidden_layers=int(config["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_scaling=rope,
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                attention_bias=qwen or bool(config.get("attention_bias", False)),
                o_bias=not qwen and bool(config.get("attention_bias", False)),
                mlp_bias=bool(config.get("mlp_bias", False)),
                architecture=arch,
            )
        except KeyError as missing:
            raise KeyError(f"{where} has no {missing} field, which a {arch} config needs") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, UnsupportedModel):
                raise
            raise ValueError(f"{where}: a field has the wrong type: {exc}") from None


def rope_frequencies(config: DecoderConfig, seq_len: int | None = None) -> torch.Tensor:
    """The rotary inverse frequencies (head_dim / 2 of them), after the configured scaling.

    `dynamic` (NTK-aware) scaling depends on the sequence length: past the trained context it raises
    the base, so pass `seq_len`; the other kinds do not depend on it.
    """
    d = config.head_dim
    base = config.rope_theta
    scaling = config.rope_scaling
    kind = scaling.get("rope_type", "default")
    if kind == "dynamic" and seq_len is not None and seq_len > config.max_position_embeddings:
        factor = float(scaling["factor"])
        base = base * ((factor * seq_len / config.max_position_embeddings) - (factor - 1)) ** (d / (d - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":  # Llama 3.1: long wavelengths divided by the factor, short kept, a ramp between
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def rotary_cos_sin(
    config: DecoderConfig, positions: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency, (batch, seq, head_dim), each frequency repeated for both
    halves of a head (the "rotate half" layout Hugging Face checkpoints are trained with)."""
    dynamic = config.rope_scaling.get("rope_type") == "dynamic"
    seq_len = int(positions.max()) + 1 if dynamic and positions.numel() else None  # only dynamic needs it
    inv_freq = rope_frequencies(config, seq_len).to(positions.device)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # computed in float32 whatever the model dtype
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + d/2) pair of a head's features by its position's angle; x is (b, heads, s, d)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


@dataclass(frozen=True)
class Step:
    """What every layer of one forward pass shares: the rotary angles, the attention mask (None: plain
    causal) and the KV cache, if any."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None
    cache: KVCache | None = None


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (as the checkpoints were trained) and cast back."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Linear(nn.Linear):
    """`nn.Linear` that multiplies a few rows (a decode step) as `weight @ x.T`.

    Why: a decode step is bound by reading the weights, and for a handful of rows BLAS reads them faster
    as the left operand in their own layout than as the transposed right operand `F.linear` passes.
    Measured on 2 Zen 2 cores, SmolLM-135M's layers at 8 rows: 1.26x faster alone, a whole decode step
    about 1.1x; at 1 row no difference (a matrix-vector product either way), so one row keeps `F.linear`,
    as does prefill (many rows, compute-bound).
    """

    FEW_ROWS = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not 1 < x.numel() // x.shape[-1] <= self.FEW_ROWS or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])
        y = (self.weight @ rows.T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class Attention(nn.Module):
    """Causal self-attention with rotary positions and grouped key/value heads."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = config
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.o_bias)

    def forward(self, x: torch.Tensor, step: Step, layer: int) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, step.cos, step.sin), apply_rotary(k, step.cos, step.sin)
        if step.cache is not None:  # keys and values of every token so far, this step's written in place
            k, v = step.cache.update(layer, k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=step.mask, is_causal=step.mask is None, enable_gqa=self.kv_heads != self.heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = config
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, step: Step, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), step, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embedding, layers and final norm: `model.*` in a Hugging Face state dict."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Decoder(nn.Module):
    """`model(input_ids)` -> logits (batch, seq, vocab), causal.

    With a `cache` (`common.llm.cache`), the tokens continue what the cache holds: their keys and values
    are written into it, they attend to everything before them, and `positions` (batch, seq) give each
    row's own positions (rows of a left-padded batch start at different slots).
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`valid` (batch, seq), with a cache: False for padding tokens, which nothing may attend to."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        b, s = input_ids.shape
        if positions is None:  # (a compiled step passes positions: reading cache.length would specialise on it)
            start = 0 if cache is None else cache.length
            positions = torch.arange(start, start + s, device=input_ids.device).expand(b, s)
        static = getattr(cache, "slot", None) is not None  # a compiled decode step: checked by the caller
        if s and not static and (end := int(positions.max()) + 1) > self.config.max_position_embeddings:
            raise ValueError(
                f"{end} tokens exceed the model's context of {self.config.max_position_embeddings} positions"
            )
        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(self.config, positions, x.dtype)
        step = Step(cos, sin, None if cache is None else cache.attention_mask(s, valid), cache)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, step, i)
        if cache is not None and not static:
            cache.advance(s)  # a static step leaves it to the caller, outside the compiled graph
        return self.lm_head(self.model.norm(x))


class KVCache(Protocol):
    """What attention needs from a cache; `common.llm.cache` holds the implementations."""

    length: int  # slots written so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys and values (batch, kv_heads, new, head_dim); all of them so far back."""
        ...

    def attention_mask(self, new_tokens: int, valid: torch.Tensor | None) -> torch.Tensor:
        """(batch, 1, new, slots) True where a new token may attend; records which new tokens are real."""
        ...

    def advance(self, new_tokens: int) -> None: ...
