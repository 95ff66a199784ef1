"""The model the repository ships (common/llm/default_model): it loads, it is what training.json says it
is (parameters, files, and the held-out perplexity recomputed on the held-out ids shipped beside it), and
it writes something that looks like Python."""

import math

import pytest
import torch

from common.llm import default_training, generate, load_default, perplexity
from common.llm.default import DEFAULT_MODEL_DIR, TRAINING_FILE, default_heldout
from common.llm.tokenizer import eos_id


@pytest.fixture(scope="module")
def shipped():
    return load_default()


def test_the_shipped_folder_is_small_and_is_what_its_record_lists(shipped):
    model, tokenizer = shipped
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert sum(files.values()) < 20 * 2**20
    record = default_training()
    del files[TRAINING_FILE]
    assert record["files"] == files, "the record was written for other files: rebuild with `make model`"
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert tokenizer.get_vocab_size() == model.config.vocab_size == record["recipe"]["vocab_size"]
    assert record["loss"]["first"] == pytest.approx(math.log(model.config.vocab_size), abs=0.5)  # a uniform guess
    assert record["loss"]["last"] < record["loss"]["first"] - 3


def test_the_shipped_heldout_ids_are_the_recorded_ones(shipped):
    model, tokenizer = shipped
    heldout = default_heldout()
    record = default_training()["heldout"]
    assert heldout.dtype == torch.int64 and heldout.shape == (record["tokens"],)
    assert int(heldout.min()) >= 0 and int(heldout.max()) < model.config.vocab_size
    eos = eos_id(tokenizer)
    assert int((heldout == eos).sum()) == record["files"], "each held-out file starts with <|endoftext|>"
    assert heldout[0] == eos


@pytest.mark.slow
def test_recorded_perplexity_is_what_the_weights_give_on_the_shipped_ids(shipped):
    model, _ = shipped
    record = default_training()
    got = perplexity(model, default_heldout(), record["recipe"]["context"])
    # the same weights on the same ids: only the order of float sums may differ between CPUs
    assert got == pytest.approx(record["heldout"]["perplexity"], rel=1e-5)


def test_it_writes_indented_python(shipped):
    model, tokenizer = shipped
    prompt = "def read_config(path):"  # no trailing newline: the tokenizer joins a newline to the indent after it
    text = generate(model, [tokenizer.encode(prompt).ids], max_new_tokens=40, tokenizer=tokenizer)[0].text
    assert text.startswith("\n    "), text
    with torch.inference_mode():
        logits = model(torch.tensor([tokenizer.encode("    def __init__(self").ids]))[0, -1]
    assert tokenizer.decode([int(logits.argmax())]) in {")", ",", ", "}
