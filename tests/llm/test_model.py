"""The decoder is held equal to transformers' Llama and Qwen2 on tiny random checkpoints saved to disk."""

import json

import pytest
import safetensors.torch
import torch
import transformers

from common.llm import CheckpointError, UnsafeFormat, UnsupportedModel, load_pretrained
from common.llm.model import DecoderConfig

TINY = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-tied-mqa-bias-linear-rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "tie_word_embeddings": True,
            "num_key_value_heads": 1,
            "attention_bias": True,
            "mlp_bias": True,
            "head_dim": 24,  # heads x head_dim != hidden_size, as in some real models
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        },
    ),
    "llama3-rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_theta": 500_000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True, "rope_theta": 1_000_000.0}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 4}),
}


def _save_reference(folder, case: str, seed: int = 0, **save_kwargs):
    config_cls, model_cls, extra = CASES[case]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**TINY, **extra})
    reference = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them so they are tested
        for name, p in reference.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                p.add_(torch.randn_like(p) * 0.1)
    reference.save_pretrained(folder, **save_kwargs)
    return reference


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = _save_reference(folder, request.param)
    return request.param, reference, load_pretrained(folder), folder


def test_logits_match_transformers(pair):
    case, reference, ours, _ = pair
    ids = torch.randint(0, TINY["vocab_size"], (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(ids).logits
        got = ours(ids)
    assert got.shape == (3, 40, TINY["vocab_size"])
    err = (got - want).abs().max() / want.abs().max()
    assert err < 1e-4, f"{case}: relative error {err:.2e}"


def test_greedy_tokens_match_transformers(pair):
    case, reference, ours, _ = pair
    prompt = torch.tensor([[1, 5, 9, 17, 33]])
    with torch.no_grad():
        want = reference.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 5:].tolist()
        ids = prompt
        for _ in range(12):  # no cache yet: the whole sequence again each step
            ids = torch.cat([ids, ours(ids)[:, -1:].argmax(-1)], dim=1)
    assert ids[0, 5:].tolist() == want, case


def test_tied_embeddings_share_one_tensor(pair):
    case, _, ours, _ = pair
    tied = ours.config.tie_word_embeddings
    assert (ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()) == tied, case


def test_a_sharded_checkpoint_loads_the_same(tmp_path):
    reference = _save_reference(tmp_path, "llama", max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("*.safetensors"))) > 2
    ids = torch.arange(20)[None]
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(tmp_path)(ids), reference(ids).logits, rtol=1e-4, atol=1e-4)


def test_config_reads_both_transformers_layouts():
    old = {**TINY, "architectures": ["LlamaForCausalLM"], "rope_theta": 5e5,
           "rope_scaling": {"type": "linear", "factor": 4.0}}  # fmt: skip
    config = DecoderConfig.from_hf(old)
    assert config.rope_theta == 5e5 and config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert config.head_dim == 16 and config.kv_groups == 2


def test_unsupported_architectures_and_options_are_named(tmp_path):
    with pytest.raises(UnsupportedModel, match=r"GPT2LMHeadModel is not supported; this decoder loads LlamaFor"):
        DecoderConfig.from_hf({**TINY, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(UnsupportedModel, match="rope scaling 'yarn' is not implemented"):
        DecoderConfig.from_hf({**TINY, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 2}})
    with pytest.raises(UnsupportedModel, match="whole number of query heads"):
        DecoderConfig.from_hf({**TINY, "model_type": "llama", "num_key_value_heads": 3})
    with pytest.raises(KeyError, match="no 'hidden_size' field"):
        DecoderConfig.from_hf({k: v for k, v in TINY.items() if k != "hidden_size"} | {"model_type": "llama"})


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    _save_reference(tmp_path, "llama")
    weights = tmp_path / "model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 128}))
    with pytest.raises(CheckpointError, match=r"gate_proj\.weight: expected \(128, 64\), found \(160, 64\)"):
        load_pretrained(tmp_path)


def test_pickle_checkpoints_are_refused(tmp_path):
    _save_reference(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeFormat, match=r"pytorch_model\.bin.*unpickling runs code"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        load_pretrained(tmp_path / "nowhere")


def test_prompts_longer_than_the_context_are_refused(pair):
    _, _, ours, _ = pair
    with pytest.raises(ValueError, match="65 tokens exceed the model's context of 64 positions"):
        ours(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("bias", [False, True])
def test_the_few_rows_linear_equals_nn_linear(bias):
    from common.llm.model import Linear

    torch.manual_seed(0)
    fast = Linear(48, 40, bias=bias)
    for shape in [(1, 48), (3, 48), (2, 8, 48), (17, 48), (2, 1, 48)]:
        x = torch.randn(shape)
        torch.testing.assert_close(fast(x), torch.nn.functional.linear(x, fast.weight, fast.bias))
        assert fast(x).shape == (*shape[:-1], 40)
