"""The byte-level BPE tokenizer: exact round trips on any text, deterministic training, and one file that
both `tokenizers` and `transformers` load into the same ids."""

import re

import pytest
import transformers
from tokenizers import Tokenizer, models

from common.llm.corpus import stdlib_corpus
from common.llm.tokenizer import (
    BYTES,
    EOS,
    SPECIAL_TOKENS,
    eos_id,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

VOCAB = 512


@pytest.fixture(scope="module")
def corpus():
    return stdlib_corpus(max_files=40, heldout_every=5)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus.train_texts, VOCAB)


TEXTS = {
    "empty": "",
    "one space": " ",
    "whitespace": "\n\n\t  \t\r\n   \n        x  \n\n",
    "python": 'class A(B):\n    """Doc."""\n\n    def f(self, x: int = 3) -> str:\n        return f"{x!r:>10}"  # why\n',
    "unicode": "naïve café — 日本語のテキスト, Ελληνικά, עברית, 🙂👍🏽 e\u0301 (decomposed)",
    "control bytes": "\x00\x01\x1b[31m\x7f\u200b\ufeff",
    "crlf": "a\r\nb\rc\n",
    "long run": " " * 100 + "-" * 300 + "\n",
}


@pytest.mark.parametrize("name", list(TEXTS))
def test_round_trip_is_exact(tokenizer, name):
    text = TEXTS[name]
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < VOCAB for i in ids)


def test_round_trip_on_unseen_python(tokenizer, corpus):
    for text in corpus.heldout_texts:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_the_special_token_is_one_id_and_survives_decoding_when_kept(tokenizer):
    text = f"a = 1\n{EOS}b = 2\n"
    ids = tokenizer.encode(text).ids
    assert eos_id(tokenizer) in ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.decode(ids) == "a = 1\nb = 2\n"  # the default skips it: say so in the docs, not silently


def test_vocabulary_has_specials_bytes_and_merges(tokenizer):
    assert tokenizer.get_vocab_size() == VOCAB
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    every_byte = bytes(range(BYTES)).decode("latin-1")  # U+0000..U+00FF: every byte value appears in its UTF-8
    assert tokenizer.decode(tokenizer.encode(every_byte).ids) == every_byte
    assert len(tokenizer.encode("    return self").ids) <= 3  # merges learned something about Python


def test_training_is_deterministic(corpus, tokenizer, tmp_path):
    again = train_tokenizer(corpus.train_texts, VOCAB)
    assert again.to_str() == tokenizer.to_str()
    save_tokenizer(tokenizer, tmp_path / "a")
    save_tokenizer(again, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_saved_file_loads_in_tokenizers_and_transformers(tokenizer, tmp_path):
    path = save_tokenizer(tokenizer, tmp_path, model_max_length=128)
    text = TEXTS["python"] + TEXTS["unicode"]
    want = tokenizer.encode(text).ids
    assert Tokenizer.from_file(str(path)).encode(text).ids == want
    assert load_tokenizer(tmp_path).encode(text).ids == want
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast(text)["input_ids"] == want
    assert fast.decode(want) == text
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert auto(text)["input_ids"] == want
    assert auto.decode(want) == text
    assert auto.eos_token == EOS and auto.eos_token_id == eos_id(tokenizer)
    assert auto.model_max_length == 128


def test_bad_arguments_say_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257"):
        train_tokenizer(["x"], 100)
    with pytest.raises(TypeError, match="not one string"):
        train_tokenizer("def f(): pass", 300)
    with pytest.raises(TypeError, match="item 1 is a bytes"):
        train_tokenizer(["a", b"b"], 300)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(["a"], 300, min_frequency=0)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at .*tokenizer\.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"has no {EOS} token")):
        eos_id(Tokenizer(models.BPE()))


def test_a_tiny_corpus_gives_a_smaller_vocabulary_not_an_error():
    tokenizer = train_tokenizer(["ab ab ab"], 4096)
    assert len(SPECIAL_TOKENS) + BYTES <= tokenizer.get_vocab_size() < 4096
    assert tokenizer.decode(tokenizer.encode("zzz ab").ids) == "zzz ab"
