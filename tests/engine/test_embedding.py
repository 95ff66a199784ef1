"""The packaged all-MiniLM-L6-v2 as an engine Model, held to sentence-transformers' own output."""

import numpy as np
import pytest

from common.engine import InvalidRequest, build_engine
from common.engine.embedding import EmbeddingCodec, minilm_path, sentence_encoder

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
    with pytest.raises(InvalidRequest, match=r"request 1: text is \d+ tokens; the limit is 256"):
        codec.tokenize(["fine", "word " * 300])
    with pytest.raises(InvalidRequest, match="request 0: text is empty"):
        codec.tokenize([" "])
    with pytest.raises(InvalidRequest, match="request 0: expected a string, got int"):
        codec.tokenize([7])


def test_a_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        sentence_encoder(tmp_path)
