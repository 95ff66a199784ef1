"""Hugging Face model folders: reading one into a `Decoder` (safetensors, never pickle) and writing one.

A folder holds `model.safetensors`, or shards listed by `model.safetensors.index.json`. Tensors are
loaded by name and checked against the model before any is used: a missing, unexpected or misshapen
tensor is an error that names it. `pytorch_model.bin` and other pickle checkpoints are refused by
`common.secure.pickles` (with its `UnsafeFormat`, as encrypted folders are), because unpickling runs
whatever code the file names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import safetensors
import safetensors.torch
import tokenizers
import torch

from common.llm.model import Decoder, DecoderConfig
from common.llm.tokenizer import eos_id, save_tokenizer
from common.secure.pickles import HEAD_BYTES, refuse_pickle

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
WeightDtype = Literal["float32", "float16", "bfloat16"]  # how a saved folder stores its weights
DTYPES: dict[WeightDtype, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class CheckpointError(ValueError):
    """A model folder whose files do not make the model its config describes."""


def _weight_files(folder: Path) -> list[Path]:
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{folder / INDEX} is not a safetensors index (no 'weight_map')") from None
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    for path in sorted(folder.iterdir()):  # only pickle weights here (pytorch_model.bin): say so, by name
        refuse_pickle(str(path))
    raise CheckpointError(f"{folder} has no {WEIGHTS} and no {INDEX}")


def load_pretrained(folder: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> Decoder:
    """The decoder of a Hugging Face folder, its weights checked by name and shape, in `dtype`.

    float32 is the default: on CPUs without bf16 units (these course machines) bf16 matmuls run about
    100x slower than float32, so a bf16 checkpoint is converted on load unless `dtype` says otherwise.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: {CONFIG} is missing")
    try:
        raw = json.loads((folder / CONFIG).read_text())
    except ValueError as exc:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON: {exc}") from None
    config = DecoderConfig.from_hf(raw, str(folder / CONFIG))
    tensors: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{path.name}, listed in {INDEX}, is missing from {folder}")
        with open(path, "rb") as raw:  # a pickle renamed to .safetensors is still a pickle
            refuse_pickle(str(path), raw.read(HEAD_BYTES))
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                    if name in tensors:
                        raise CheckpointError(f"tensor {name!r} appears in more than one shard ({path.name})")
                    tensors[name] = f.get_tensor(name)
        except safetensors.SafetensorError as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints store it anyway; the tie wins
    with torch.device("meta"):
        model = Decoder(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(n for n in set(tensors) - set(expected) if not n.endswith("rotary_emb.inv_freq"))
    misshapen = [f"{n}: expected {tuple(expected[n])}, found {tuple(tensors[n].shape)}"
                 for n in sorted(set(expected) & set(tensors)) if tensors[n].shape != expected[n]]  # fmt: skip
    problems = [
        *([f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"] if missing else []),
        *([f"unexpected tensors: {', '.join(unexpected[:8])}"] if unexpected else []),
        *([f"shape mismatches: {'; '.join(misshapen[:8])}"] if misshapen else []),
    ]
    if problems:
        raise CheckpointError(f"{folder} does not match its {config.architecture} config: " + " | ".join(problems))
    state = {n: tensors[n].to(dtype) for n in expected}
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def hf_config(config: DecoderConfig, dtype: WeightDtype, eos: int) -> dict[str, Any]:
    """The `config.json` of a Llama checkpoint, readable by `DecoderConfig.from_hf` and by transformers
    4 (`rope_theta`, `torch_dtype`) and 5 (`rope_parameters`, `dtype`)."""
    if config.architecture != "LlamaForCausalLM" or config.rope_scaling or config.attention_bias:
        raise ValueError("only plain Llama configs (no rope scaling, no attention bias) are written")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": config.mlp_bias,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": 0.02,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def save_pretrained(
    model: Decoder, tokenizer: tokenizers.Tokenizer, folder: str | os.PathLike[str], dtype: WeightDtype = "float16"
) -> Path:
    """Write a Hugging Face folder: config.json, model.safetensors (HF names, weights in `dtype`; a tied
    lm_head is not stored, as transformers does), tokenizer.json + tokenizer_config.json, generation_config.json."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    eos = eos_id(tokenizer)
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocabulary is {model.config.vocab_size}"
        )
    state = {n: t.detach().to(DTYPES[dtype]).contiguous() for n, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]
    safetensors.torch.save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    config = hf_config(model.config, dtype, eos)
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, "do_sample": False}
    (folder / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2) + "\n")
    save_tokenizer(tokenizer, folder, model_max_length=model.config.max_position_embeddings)
    return folder
