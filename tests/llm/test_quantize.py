"""Weight-only quantisation of the decoder: close to float32, smaller, and the same on both paths."""

import copy

import pytest
import torch

from common.llm.cache import StaticCache
from common.llm.generate import generate
from common.llm.model import Decoder, DecoderConfig
from common.llm.quantize import QuantizedLinear, quantize, weight_bytes

CONFIG = DecoderConfig(
    vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=64, tie_word_embeddings=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Decoder(CONFIG).eval()


@pytest.mark.parametrize(("scheme", "group", "max_error"), [("int8", 128, 0.02), ("int4", 32, 0.2)])
@torch.inference_mode()
def test_quantised_logits_stay_close_and_the_weights_shrink(model, scheme, group, max_error):
    small = quantize(copy.deepcopy(model), scheme, group)
    linears = [m for m in small.modules() if isinstance(m, QuantizedLinear)]
    assert len(linears) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the (untied) head
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))
    want, got = model(ids), small(ids)
    err = (got - want).abs().max() / want.abs().max()
    assert err < max_error, f"{scheme}: relative error {err:.3f}"
    full = sum(m.weight.nbytes for m in model.modules() if isinstance(m, torch.nn.Linear))
    packed = sum(m.qweight.nbytes for m in linears)
    assert packed == full // (4 if scheme == "int8" else 8)
    assert weight_bytes(small) < weight_bytes(model) + full  # the head's own copy is smaller than float32's


@torch.inference_mode()
def test_the_decode_kernels_and_the_prefill_matmul_agree(model):
    for scheme in ("int8", "int4"):
        small = quantize(copy.deepcopy(model), scheme, 32)
        ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(2))
        prefill = small(ids)  # 40 rows: dequantised weights through torch
        cache = StaticCache(CONFIG, 1, 40)
        small(ids[:, :30], cache=cache)
        one_by_one = torch.cat([small(ids[:, i : i + 1], cache=cache) for i in range(30, 40)], dim=1)  # the kernels
        torch.testing.assert_close(one_by_one, prefill[:, 30:], rtol=1e-4, atol=1e-4)
        rows = torch.randn(3, CONFIG.hidden_size)
        layer = small.model.layers[0].mlp.up_proj
        torch.testing.assert_close(layer(rows), rows @ layer.dequantized().T, rtol=1e-4, atol=1e-4)
        assert generate(small, [[1, 2, 3]], max_new_tokens=5)[0].finish_reason == "max_tokens"


def test_bad_schemes_and_groups_are_named(model):
    with pytest.raises(ValueError, match="scheme must be one of"):
        quantize(copy.deepcopy(model), "int2")
    odd = Decoder(DecoderConfig(vocab_size=8, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, head_dim=24))  # fmt: skip
    with pytest.raises(ValueError, match=r"int4 groups of 32 do not divide the inputs of model\.layers\.0"):
        quantize(odd, "int4", 32)


def test_bytes_read_per_token_count_each_variants_weights_and_scales(model):
    from common.llm.anatomy import parameter_count
    from common.llm.quantize import read_bytes_per_token, variant

    assert read_bytes_per_token(model) == 4 * parameter_count(CONFIG).matmul
    assert variant(model, "fp32") is model
    int8 = variant(model, "int8")
    assert read_bytes_per_token(int8) == parameter_count(CONFIG).matmul + 4 * sum(
        m.out_features for m in int8.modules() if isinstance(m, QuantizedLinear)
    )  # a byte per weight, a float32 scale per output row
    with pytest.raises(ValueError, match="variant must be one of fp32, int8, int4 g128, int4 g32"):
        variant(model, "int2")


def test_the_quantisation_table_reports_each_variants_bytes_perplexity_and_step_time(model, monkeypatch):
    """The table's wiring, with the step timer stubbed (step_seconds is tested on its own in test_anatomy):
    each row is its variant's bytes, its perplexity and its own step time, in the units the columns name."""
    from common.llm import profile
    from common.llm.evaluate import perplexity
    from common.llm.quantize import VARIANTS, read_bytes_per_token, variant

    timed = []

    def fake_step_seconds(m, mode, context, *, steps):  # a step time that names the model it was asked for
        timed.append((mode, context))
        return read_bytes_per_token(m) / 1e9

    monkeypatch.setattr(profile, "step_seconds", fake_step_seconds)
    tokens = torch.randint(0, CONFIG.vocab_size, (300,), generator=torch.Generator().manual_seed(0))
    rows = {r["variant"]: r for r in profile.quantisation_table(model, tokens, context=16)}
    assert list(rows) == list(VARIANTS) and timed == [("static", 16)] * len(VARIANTS)
    for name, row in rows.items():
        read = read_bytes_per_token(variant(model, name))
        assert row["MB read per token"] == read / 1e6
        assert row["ms per token"] == pytest.approx(read / 1e6) and row["tokens/s"] == pytest.approx(1e9 / read)
    read = [rows[n]["MB read per token"] for n in VARIANTS]
    assert read[0] > read[1] > read[3] > read[2]  # int4 g32 carries four times the scales of g128
    assert rows["fp32"]["perplexity"] == perplexity(model, tokens)
    assert abs(rows["int8"]["perplexity"] / rows["fp32"]["perplexity"] - 1) < 0.01
    assert rows["int4 g32"]["perplexity"] != rows["fp32"]["perplexity"], "the int4 row measured the int4 model"
    assert "perplexity" not in profile.quantisation_table(model, names=("int8",))[0]


def test_the_quantisation_table_times_the_variants_in_turn_and_reports_each_ones_median(model, monkeypatch):
    from common.llm import profile
    from common.llm.quantize import read_bytes_per_token

    order, slow = [], iter([5.0, 1.0, 1.0, 1.0, 1.0, 9.0])  # one slow moment in each variant's rounds

    def fake_step_seconds(m, mode, context, *, steps):
        order.append(read_bytes_per_token(m))
        return next(slow)

    monkeypatch.setattr(profile, "step_seconds", fake_step_seconds)
    rows = profile.quantisation_table(model, names=("fp32", "int8"), rounds=3)
    fp32, int8 = order[0], order[1]
    assert order == [fp32, int8] * 3, "round after round, each variant in turn"
    assert [r["ms per token"] for r in rows] == [1e3, 1e3], "each the median of its three rounds"
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        profile.quantisation_table(model, rounds=0)
