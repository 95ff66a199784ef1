"""The model the repository ships (common/llm/default_model): it loads, it is what training.json says it
is (parameters, held-out perplexity recomputed on this machine's stdlib when it is the one it saw), and
it writes something that looks like Python."""

import pytest
import torch

from common.llm import default_training, generate, load_default, perplexity
from common.llm.corpus import stdlib_corpus, token_stream
from common.llm.default import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def shipped():
    return load_default()


def test_the_shipped_folder_is_small_and_complete(shipped):
    model, tokenizer = shipped
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert set(files) >= {"config.json", "model.safetensors", "tokenizer.json", "training.json"}
    assert sum(files.values()) < 20 * 2**20
    record = default_training()
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert tokenizer.get_vocab_size() == model.config.vocab_size == record["recipe"]["vocab_size"]
    assert 1 < record["heldout"]["perplexity"] < 150
    assert record["loss"]["last"] < record["loss"]["first"] - 3


@pytest.mark.slow
def test_recorded_perplexity_is_what_the_weights_give():
    record = default_training()
    corpus = stdlib_corpus()
    if corpus.digest != record["corpus"]["digest"]:
        pytest.skip(f"needs the stdlib the model was trained on (Python {record['python_version']}); this is another")
    model, tokenizer = load_default()
    heldout = token_stream(tokenizer, corpus.heldout_texts)
    assert heldout.numel() == record["heldout"]["tokens"]
    got = perplexity(model, heldout, record["recipe"]["context"])
    assert got == pytest.approx(record["heldout"]["perplexity"], rel=1e-4)


def test_it_writes_indented_python(shipped):
    model, tokenizer = shipped
    prompt = "def read_config(path):"  # no trailing newline: the tokenizer joins a newline to the indent after it
    text = generate(model, [tokenizer.encode(prompt).ids], max_new_tokens=40, tokenizer=tokenizer)[0].text
    assert text.startswith("\n    "), text
    with torch.inference_mode():
        logits = model(torch.tensor([tokenizer.encode("    def __init__(self").ids]))[0, -1]
    assert tokenizer.decode([int(logits.argmax())]) in {")", ",", ", "}
