"""The packaged all-MiniLM-L6-v2 as an engine Model, held to sentence-transformers' own output."""

import numpy as np
import pytest

from common.engine import InvalidRequest, RequestTooLarge, build_engine
from common.engine.embedding import CHARS_PER_TOKEN_BOUND, TOKENIZE_GROUP, EmbeddingCodec, minilm_path, sentence_encoder

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Dynamic batching trades a little latency for a lot of throughput.",
    "hello",
    "A much longer sentence, with punctuation; numbers like 3.14159, and words the vocabulary splits into pieces.",
]


@pytest.fixture(scope="module")
def codec() -> EmbeddingCodec:
    return EmbeddingCodec.from_folder()


@pytest.fixture(scope="module")
def ours(codec) -> np.ndarray:
    with build_engine(sentence_encoder(), codec, device="cpu") as engine:
        return np.stack(engine.infer(codec.tokenize(TEXTS)))


@pytest.mark.slow
def test_matches_sentence_transformers(ours):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_a_text_s_embedding(codec, ours):
    """Batched with longer texts (so padded) or alone: the same vector."""
    with build_engine(sentence_encoder(), codec, device="cpu", warmup=0) as engine:
        alone = engine.infer(codec.tokenize([TEXTS[2]]))[0]
    np.testing.assert_allclose(alone, ours[2], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "min_cosine"), [("bf16", 0.99), ("int8", 0.8)])
def test_reduced_precision_stays_close(codec, ours, precision, min_cosine):
    with build_engine(sentence_encoder(), codec, device="cpu", precision=precision, warmup=0) as engine:
        got = np.stack(engine.infer(codec.tokenize(TEXTS)))
    cosine = (got * ours).sum(axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > min_cosine, f"{precision}: cosine to fp32 {cosine}"


def test_tokenizer_refuses_what_the_model_cannot_take(codec):
    with pytest.raises(RequestTooLarge, match=r"request 1: text is 302 tokens; the limit is 256"):
        codec.tokenize(["fine", "word " * 300])  # "word" is one token: 300 + [CLS] + [SEP]
    for bad, message in (([" "], "request 0: text is empty"), ([7], "request 0: expected a string, got int")):
        with pytest.raises(InvalidRequest, match=message) as info:
            codec.tokenize(bad)
        assert not isinstance(info.value, RequestTooLarge), "a malformed text is invalid (422), not too large (413)"


class SpyTokenizer:
    """The real tokenizer, recording what it was given."""

    def __init__(self, real):
        self.real = real
        self.calls: list[list[str]] = []

    def __call__(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.real(texts, **kwargs)


@pytest.fixture
def spied(codec) -> tuple[EmbeddingCodec, SpyTokenizer]:
    spy = SpyTokenizer(codec.tokenizer)
    return EmbeddingCodec(spy, max_tokens=codec.max_tokens), spy


def test_a_huge_text_is_decided_from_its_first_characters(spied):
    codec, spy = spied
    assert codec.max_chars == 256 * CHARS_PER_TOKEN_BOUND
    huge = "word " * 2_000_000  # 10 MB
    # its first max_chars characters: 1638 whole "word "s, then "wo" (a token too), plus [CLS] and [SEP]
    at_least = codec.max_chars // 5 + 1 + 2
    prefix = rf"text is over 256 tokens \({at_least} in its first {codec.max_chars} characters\); the limit is 256"
    with pytest.raises(RequestTooLarge, match=rf"request 0: {prefix}"):
        codec.tokenize([huge])
    assert [len(t) for call in spy.calls for t in call] == [codec.max_chars], "only the deciding prefix is tokenised"


def test_a_text_with_few_tokens_for_its_length_is_refused_by_its_characters(spied):
    codec, _ = spied
    word = "x" * 101 + " "  # WordPiece reads a word over 100 characters as one [UNK]: 102 characters a token
    fits = word * (codec.max_chars // len(word))
    assert [len(row) for row in codec.tokenize([fits])] == [fits.count(" ") + 2]
    with pytest.raises(
        RequestTooLarge, match=rf"request 0: text is {len(fits) + 1000} characters; the limit is {codec.max_chars}"
    ):
        codec.tokenize([fits + "y" * 1000])


def test_tokenising_stops_at_the_group_of_the_first_refused_text(spied):
    codec, spy = spied
    texts = ["fine"] * (4 * TOKENIZE_GROUP)
    texts[1] = "word " * 300
    with pytest.raises(RequestTooLarge, match="request 1: "):
        codec.tokenize(texts)
    assert [len(call) for call in spy.calls] == [TOKENIZE_GROUP], (
        "the groups after the refused text are never tokenised"
    )
    texts[1] = "fine"
    assert len(codec.tokenize(texts)) == len(texts) and len(spy.calls) == 1 + 4


def test_a_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        sentence_encoder(tmp_path)
