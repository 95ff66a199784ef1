"""One pickle refusal for every loader of weights: each suffix, the pickle magic, torch.save's zip, one error type."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

from common.llm.checkpoint import hf_config, load_pretrained
from common.llm.model import DecoderConfig
from common.secure.errors import SecureError, UnsafeFormat
from common.secure.pickles import PICKLE_SUFFIXES, is_pickle, refuse_pickle

SUFFIXES = [".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt"]


def test_the_suffix_list_is_the_documented_one():
    assert sorted(PICKLE_SUFFIXES) == sorted(SUFFIXES)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_each_pickle_suffix_is_refused_by_name_in_any_case(suffix: str) -> None:
    for name in (f"model{suffix}", f"MODEL{suffix.upper()}"):
        with pytest.raises(UnsafeFormat, match=rf"{name} is a pickle checkpoint by its name: unpickling runs code"):
            refuse_pickle(name)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_magic_is_refused_under_any_name(protocol: int) -> None:
    data = pickle.dumps({"w": 1}, protocol=protocol)
    assert data[:2] == bytes([0x80, protocol])  # PROTO and the protocol number: the magic tested for
    assert is_pickle(data[:2])
    with pytest.raises(UnsafeFormat, match=r"model\.safetensors holds pickle data"):
        refuse_pickle("model.safetensors", data)


def test_torch_save_zips_are_refused_and_safetensors_and_text_are_not() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)  # torch's zip format holds data.pkl
    with pytest.raises(UnsafeFormat, match=r"or is a zip, as torch\.save writes them"):
        refuse_pickle("weights", buf.getvalue())
    assert is_pickle(buf.getvalue()[:64]), "a zip too short to read is still not safetensors"
    assert not is_pickle(safetensors.torch.save({"w": torch.ones(2)}))
    assert not is_pickle(b'{"architectures": ["LlamaForCausalLM"]}')
    assert not is_pickle(bytes([0x80, 6])), "no protocol 6 exists: not mistaken for one"
    refuse_pickle("model.safetensors", safetensors.torch.save({"w": torch.ones(2)}))  # no error
    assert issubclass(UnsafeFormat, SecureError)


def _hf_folder(folder: Path) -> Path:
    config = DecoderConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=4)  # fmt: skip
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(config, "float32", eos=0)))
    return folder


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_hugging_face_folder_of_pickle_weights_fails_with_the_same_error(tmp_path: Path, suffix: str) -> None:
    """common.llm's loader refuses through the same function, so a caller catches one type for both loaders."""
    folder = _hf_folder(tmp_path / "m")
    (folder / f"pytorch_model{suffix}").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(UnsafeFormat, match=rf"pytorch_model\{suffix} is a pickle checkpoint by its name"):
        load_pretrained(folder)


def test_a_pickle_named_safetensors_fails_by_its_magic_before_any_parser_reads_it(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(pickle.dumps({"w": 1}, protocol=4))
    with pytest.raises(UnsafeFormat, match=r"model\.safetensors holds pickle data"):
        load_pretrained(folder)
