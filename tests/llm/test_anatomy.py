"""The cost model of common.llm.anatomy, held to the module it describes: parameters to `numel`, matmul
FLOPs to torch's own FLOP counter, and the roofline story (decode far below prefill in FLOP/byte)."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.llm.anatomy import (
    KV_LAYOUTS,
    KVLayout,
    forward_cost,
    gqa_layout,
    kv_bytes_per_token,
    mla_layout,
    parameter_count,
)
from common.llm.cache import StaticCache
from common.llm.model import Decoder, DecoderConfig

CONFIGS = {
    "llama, tied": DecoderConfig(256, 64, 160, 2, 4, 2, 16, tie_word_embeddings=True),
    "llama, untied, mha": DecoderConfig(300, 48, 96, 3, 3, 3, 16),
    "qwen2 biases": DecoderConfig(128, 32, 64, 2, 4, 1, 8, attention_bias=True, architecture="Qwen2ForCausalLM"),
    "llama, all biases": DecoderConfig(128, 32, 64, 1, 2, 2, 16, attention_bias=True, o_bias=True, mlp_bias=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_equals_the_module(name):
    config = CONFIGS[name]
    model = Decoder(config)
    assert parameter_count(config).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matmul_flops_equal_torchs_flop_counter(name):
    config = CONFIGS[name]
    model = Decoder(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 12))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    counted = counter.get_flop_counts()["Global"]
    linear = sum(n for op, n in counted.items() if "mm" in str(op))  # mm, addmm: the projections and lm_head
    ours = forward_cost(config, batch=2, new_tokens=12)
    params = parameter_count(config)
    assert linear == 2 * params.matmul * 24 - 2 * 24 * _bias_params(config)  # FLOP counters skip bias adds
    assert ours.flops > linear  # plus attention


def _bias_params(config: DecoderConfig) -> int:
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = (q + 2 * kv) * c.attention_bias + c.hidden_size * c.o_bias
    per_layer += (2 * c.intermediate_size + c.hidden_size) * c.mlp_bias
    return c.num_hidden_layers * per_layer


def test_kv_bytes_and_decode_is_memory_bound_prefill_is_not():
    config = CONFIGS["llama, tied"]
    assert kv_bytes_per_token(config) == 2 * 2 * 2 * 16 * 4  # k and v, 2 layers, 2 kv heads, 16 dims, fp32
    decode = forward_cost(config, batch=1, new_tokens=1, known=100)
    prefill = forward_cost(config, batch=1, new_tokens=512)
    assert decode.intensity < 1 < 100 < prefill.intensity
    assert forward_cost(config, 8, 1, 100).intensity > 4 * decode.intensity  # batching reuses each weight read
    half = forward_cost(config, 1, 1, 100, weight_bytes_per_param=2)
    assert half.intensity > 1.5 * decode.intensity
    with pytest.raises(ValueError, match="need batch >= 1"):
        forward_cost(config, 0, 1)


STEP_TIMES = """
import json
from common.llm.model import Decoder, DecoderConfig
from common.llm.profile import step_seconds
model = Decoder(DecoderConfig(256, 64, 160, 2, 4, 2, 16, tie_word_embeddings=True)).eval()
print(json.dumps({mode: step_seconds(model, mode, 1024, batch=2, steps=5) for mode in ("none", "static", "paged")}))
"""


def test_a_step_without_a_cache_costs_several_cached_steps_at_a_long_context():
    """What step_seconds exists to show: with no cache a step reruns every token so far, with either cache it
    computes one. At 1,024 tokens that is far more work; measured 10-20x on a busy 2-core machine.

    Timed in a fresh process: once Numba's parallel kernels have run in a process (the quantisation tests),
    its OpenMP threads and torch's share the cores and torch's small operations slowed 10-300x here."""
    done = subprocess.run([sys.executable, "-c", STEP_TIMES], capture_output=True, text=True, check=True)
    seconds = json.loads(done.stdout)
    assert seconds["none"] > 3 * seconds["static"], seconds
    assert seconds["none"] > 3 * seconds["paged"], seconds


def test_step_seconds_refuses_what_does_not_fit():
    from common.llm.profile import step_seconds

    model = Decoder(CONFIGS["llama, tied"]).eval()
    with pytest.raises(ValueError, match="mode must be one of none, static, paged"):
        step_seconds(model, "dynamic", 20)
    with pytest.raises(ValueError, match="must fit the model's 2048 positions"):
        step_seconds(model, "static", 2045, steps=8)


@pytest.mark.parametrize(
    ("name", "billions"), [("SmolLM-135M", 0.1345), ("Qwen2.5-0.5B", 0.494), ("Llama-3.1-8B", 8.03)]
)
def test_known_checkpoint_shapes_count_their_published_sizes(name, billions):
    from common.llm.anatomy import CHECKPOINT_SHAPES

    config = DecoderConfig.from_hf(CHECKPOINT_SHAPES[name])
    assert parameter_count(config).total / 1e9 == pytest.approx(billions, rel=0.005)


def test_a_gqa_layout_is_kv_bytes_per_token_and_the_static_cache_it_allocates():
    config = CONFIGS["llama, tied"]
    layout = gqa_layout(config)
    assert layout.bytes(100, 4) == 100 * kv_bytes_per_token(config, 4) == StaticCache(config, 1, 100).nbytes
    assert layout.bytes_per_token(7, 2) == kv_bytes_per_token(config, 2)


def test_a_sliding_window_keeps_at_most_the_window_on_its_layers():
    config = CONFIGS["llama, tied"]  # 2 layers
    full, every, half = gqa_layout(config), gqa_layout(config, window=64), gqa_layout(config, 64, windowed_layers=1)
    assert every.bytes(64) == half.bytes(64) == full.bytes(64)  # within the window nothing is dropped
    assert every.bytes(1000) == every.bytes(64)  # every layer slides: the cache stops growing
    per_layer_token = full.bytes(1) / 2
    assert half.bytes(1000) == per_layer_token * (1000 + 64)  # one global layer grows, one slides
    assert every.bytes_per_token(1000) < half.bytes_per_token(1000) < full.bytes_per_token(1000)


def test_mla_caches_a_latent_and_a_rotary_key_per_layer_whatever_the_heads():
    """DeepSeek-V2 (arXiv 2405.04434, table 1): (d_c + d_h^R) * l elements per token, d_c = 4 d_h, d_h^R = d_h / 2,
    against 2 * n_h * d_h * l for multi-head attention."""
    mla = mla_layout(layers=60, kv_lora_rank=512, rope_head_dim=64)
    assert mla.bytes_per_token(1, 2) == 60 * (512 + 64) * 2 == 60 * 4.5 * 128 * 2
    assert KV_LAYOUTS["DeepSeek-V2 (MLA)"] == mla
    mha = KV_LAYOUTS["DeepSeek-V2 as multi-head attention"]
    assert mha.bytes(10) / mla.bytes(10) == 2 * 128 * 128 / 576


def test_a_kv_layout_refuses_what_cannot_be():
    with pytest.raises(ValueError, match="windowed_layers must be in"):
        KVLayout(4, 16, window=8, windowed_layers=5)
    with pytest.raises(ValueError, match="need a window"):
        KVLayout(4, 16, windowed_layers=2)
    with pytest.raises(ValueError, match="tokens must be >= 0"):
        KVLayout(4, 16).bytes(-1)
