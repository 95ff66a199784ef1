"""The trainer on a tiny recipe: a saved folder that our decoder and transformers both load into the same
logits, a loss that fell, the same bytes from the same seed, and clear errors for bad arguments.
The full default model is never trained here (minutes); `python -m common.llm.train` does that."""

import dataclasses
import json
import math
import re
import shutil

import pytest
import safetensors
import safetensors.torch
import torch
import transformers

from common.llm import load_pretrained
from common.llm.corpus import (
    EXCLUDED_DIRS,
    load_token_ids,
    python_files,
    save_token_ids,
    stdlib_corpus,
    token_stream,
)
from common.llm.evaluate import perplexity
from common.llm.model import Decoder, DecoderConfig
from common.llm.tokenizer import load_tokenizer
from common.llm.train import Recipe, build, init_weights, main

TINY = Recipe(
    steps=30,
    batch_size=4,
    context=32,
    lr=1e-2,
    min_lr=1e-3,
    vocab_size=320,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
)


@pytest.fixture(scope="module")
def corpus():
    return stdlib_corpus(max_files=16, heldout_every=4)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    return folder, build(folder, TINY, corpus, progress=False)


def test_corpus_is_sorted_split_by_file_and_excludes_tests(corpus):
    files = python_files(corpus.root)
    assert files == sorted(files) and len(files) > 100
    assert not any(EXCLUDED_DIRS.intersection(f.split("/")[:-1]) for f in files)
    assert "os.py" in files and not any(f.startswith(("test/", "idlelib/")) for f in files)
    assert corpus.heldout_files == tuple(files[3:16:4])
    assert set(corpus.train_files) | set(corpus.heldout_files) == set(files[:16])
    assert not set(corpus.train_files) & set(corpus.heldout_files)
    assert stdlib_corpus(max_files=16, heldout_every=4).digest == corpus.digest


def test_corpus_digest_names_the_bytes(tmp_path):
    for i in range(4):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text("assert True\n")
    first = stdlib_corpus(tmp_path, heldout_every=2)
    assert first.train_files == ("m0.py", "m2.py") and first.heldout_files == ("m1.py", "m3.py")
    (tmp_path / "m3.py").write_text("x = 33\n")
    assert stdlib_corpus(tmp_path, heldout_every=2).digest != first.digest
    with pytest.raises(ValueError, match="too few to hold out every 20th"):
        stdlib_corpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        stdlib_corpus(tmp_path / "absent")


def test_folder_loads_in_both_with_equal_logits(built):
    folder, _ = built
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "heldout_tokens.safetensors",
        "training.json",
    }
    ours = load_pretrained(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(folder).encode("import os\n\ndef main():\n    return 0\n").ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-5, rtol=1e-5)
    assert ours(ids).argmax(-1).tolist() == theirs(ids).logits.argmax(-1).tolist()


def test_saved_weights_are_hf_named_half_precision_and_tied(built):
    folder, _ = built
    with safetensors.safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        dtypes = {f.get_tensor(n).dtype for n in names}
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert "model.layers.1.self_attn.k_proj.weight" in names
    assert dtypes == {torch.float16}
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float16"
    parsed = DecoderConfig.from_hf(config)
    assert (parsed.hidden_size, parsed.num_key_value_heads, parsed.tie_word_embeddings) == (32, 1, True)
    assert parsed.max_position_embeddings == TINY.context


def test_loss_fell_and_the_record_says_so(built, corpus):
    folder, summary = built
    assert json.loads((folder / "training.json").read_text()) == summary
    assert summary["loss"]["last"] < summary["loss"]["first"] - 1.0
    assert summary["loss"]["first"] == pytest.approx(math.log(summary["recipe"]["vocab_size"]), abs=0.5)
    assert len(summary["loss"]["curve"]) == 20 and summary["loss"]["curve"][-1][0] == TINY.steps
    assert summary["corpus"]["digest"] == corpus.digest
    assert re.fullmatch(r"3\.\d+\.\d+", summary["python_version"])
    assert summary["parameters"] == sum(p.numel() for p in load_pretrained(folder).parameters())


def test_token_ids_round_trip_as_uint16_and_bad_ones_are_refused(tmp_path):
    ids = torch.tensor([0, 1, 4095, 65535, 7])
    path = save_token_ids(ids, tmp_path / "ids.safetensors")
    assert path.stat().st_size < 200 + 2 * ids.numel()  # a small header, then 2 bytes an id
    back = load_token_ids(path)
    assert back.dtype == torch.int64 and torch.equal(back, ids)
    with pytest.raises(ValueError, match=r"\[0, 65536\) to be stored as uint16, got 0\.\.65536"):
        save_token_ids(torch.tensor([0, 65536]), tmp_path / "big.safetensors")
    with pytest.raises(ValueError, match=r"1-D integer tensor, got torch\.float32"):
        save_token_ids(torch.zeros(3), tmp_path / "float.safetensors")
    safetensors.torch.save_file({"other": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a token-id file: expected one 1-D tensor named 'ids'"):
        load_token_ids(tmp_path / "other.safetensors")


def test_the_heldout_ids_are_saved_and_give_the_recorded_perplexity(built, corpus):
    folder, summary = built
    heldout = load_token_ids(folder / "heldout_tokens.safetensors")
    assert torch.equal(heldout, token_stream(load_tokenizer(folder), corpus.heldout_texts))
    assert heldout.numel() == summary["heldout"]["tokens"]
    trained = perplexity(load_pretrained(folder), heldout, TINY.context)
    assert trained == pytest.approx(summary["heldout"]["perplexity"], rel=1e-6)
    untrained = Decoder(TINY.decoder_config(summary["recipe"]["vocab_size"])).eval()
    init_weights(untrained, TINY.seed, TINY.init_std)
    assert trained < perplexity(untrained, heldout, TINY.context) / 2, "30 steps halve the untrained perplexity"


def test_perplexity_matches_a_plain_loop(built):
    model = load_pretrained(built[0])
    tokens = torch.randint(0, TINY.vocab_size, (100,), generator=torch.Generator().manual_seed(0))
    nll = []
    with torch.no_grad():
        for start in range(0, 99, 32):  # windows of 33 tokens that overlap by one: 99 predictions
            window = tokens[start : start + 33][None]
            logits = model(window[:, :-1])
            nll.append(torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum"))
    assert perplexity(model, tokens, 32, batch_size=2) == pytest.approx(math.exp(sum(nll).item() / 99), rel=1e-5)
    with pytest.raises(ValueError, match="exceeds the model's 32 positions"):
        perplexity(model, tokens, 64)


def test_same_seed_same_bytes(built, corpus, tmp_path):
    """A second build of the same recipe and corpus writes the same files, and no temporary folder."""
    build(tmp_path / "again", TINY, corpus, progress=False)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (built[0] / name).read_bytes(), name
    assert [p.name for p in tmp_path.iterdir()] == ["again"]
    build(tmp_path / "seed1", dataclasses.replace(TINY, seed=1), corpus, progress=False)
    assert (tmp_path / "seed1" / "model.safetensors").read_bytes() != (built[0] / "model.safetensors").read_bytes()


def test_build_refuses_to_overwrite_unless_asked(built, corpus, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(built[0], target)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build(target, TINY, corpus, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"context": 1}, "context must be >= 2"),
        ({"lr": 1e-3, "min_lr": 1e-2}, "0 < min_lr <= lr"),
        ({"warmup": 1.0}, "fraction of the steps"),
        ({"hidden_size": 30, "num_heads": 4}, "heads of an even size"),
        ({"num_heads": 4, "num_kv_heads": 3}, "multiple of num_kv_heads"),
        ({"dtype": "int8"}, "dtype must be one of float32, float16, bfloat16"),
    ],
)
def test_recipe_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Recipe(**kwargs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
        (["--steps", "many"], "argument --steps: expected a positive integer, got 'many'"),
        (["--lr", "-1"], "argument --lr: expected a positive number, got -1.0"),
        (["--dtype", "int4"], "argument --dtype: invalid choice: 'int4'"),
        (["--heldout-every", "1"], "heldout_every must be >= 2"),
        (["--lr", "1e-4", "--min-lr", "1e-3"], "0 < min_lr <= lr"),
    ],
)
def test_command_line_errors_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", "unused", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line_builds_a_folder(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "m"), "--max-files", "8", "--heldout-every", "4", "--steps", "2"]
    assert main([*argv, "--batch-size", "1", "--context", "16", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert re.match(rf"{re.escape(str(tmp_path / 'm'))}: [\d,]+ parameters, 2 steps .* held-out perplexity", printed)
    assert json.loads((tmp_path / "m" / "training.json").read_text())["recipe"]["context"] == 16
    with pytest.raises(SystemExit):
        main([*argv, "--quiet"])  # exists, and no --force
    assert "already exists; pass overwrite=True (--force)" in capsys.readouterr().err
