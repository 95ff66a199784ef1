import base64
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tests.serving.stubs import DIM, StubEmbeddingRuntime, stub_engine

from common.engine.embedding import EmbeddingCodec
from common.serving.app import TOKENIZE_ON_LOOP_MAX, create_app
from common.serving.metrics import METRICS
from common.serving.settings import ServingSettings

SETTINGS = ServingSettings(max_inputs_per_request=8, max_tokens=32, max_batch_size=4, max_queue_delay_ms=1)
URL = "/v1/embeddings"


def wait_ready(client: TestClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(SETTINGS, engine=stub_engine())) as c:
        wait_ready(c)
        yield c


def test_one_string_or_a_list_each_get_their_own_vectors_in_order(client):
    tokens = EmbeddingCodec.from_folder().tokenize(["hello", "a much longer sentence than that"])
    r = client.post(URL, json={"input": ["hello", "a much longer sentence than that"], "model": SETTINGS.model_name})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == SETTINGS.model_name
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert [d["embedding"][0] for d in body["data"]] == [len(t) for t in tokens]
    assert [d["embedding"][1] for d in body["data"]] == [t[1] for t in tokens]
    assert body["usage"] == {"prompt_tokens": sum(map(len, tokens)), "total_tokens": sum(map(len, tokens))}
    single = client.post(URL, json={"input": "hello"}).json()
    assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == DIM


def test_base64_encoding_carries_the_same_floats(client):
    plain = client.post(URL, json={"input": ["hello world"]}).json()["data"][0]["embedding"]
    b64 = client.post(URL, json={"input": ["hello world"], "encoding_format": "base64"}).json()["data"][0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(b64), "<f4"), np.array(plain, np.float32))


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"input": []}, 422, "input: expected at least one text"),
        ({"input": ["ok", 3]}, 422, "input[1]: expected a string, got int"),
        ({"input": 3}, 422, "input: expected a string or a list of strings"),
        ({"input": ["ok", "   "]}, 422, "input[1]: text is empty"),
        ({}, 422, "input: Field required"),
        ({"input": ["x"] * 9}, 413, "9 texts in one request; the limit is 8"),
        ({"input": ["ok", "word " * 40]}, 413, "input[1]: text is 42 tokens; the limit is 32"),
        ({"input": "ok", "model": "gpt-4"}, 404, "'gpt-4' is not served here"),
        ({"input": "ok", "encoding_format": "int8"}, 422, "encoding_format"),
    ],
)
def test_bad_input_names_the_field_and_the_limit(client, payload, status, message):
    r = client.post(URL, json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_wrong_content_type_and_malformed_json_are_400(client):
    r = client.post(URL, content=b'{"input": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "expected Content-Type: application/json" in r.text
    r = client.post(URL, content=b'{"input": "x"', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.text


def test_metrics_are_exported_with_their_documented_names(client):
    client.post(URL, json={"input": "count me"})
    text = client.get("/metrics").text
    for name, (kind, _, _) in METRICS.items():
        assert f"# TYPE {name} {kind}" in text, name
    assert 'hpai_requests_total{endpoint="/v1/embeddings",status="200"}' in text
    assert "hpai_model_ready 1.0" in text


def test_healthz_answers_while_readyz_waits_for_the_warmed_model():
    hold = threading.Event()
    app = create_app(SETTINGS, engine=stub_engine(hold_warmup=hold))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post(URL, json={"input": "too early"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        hold.set()
        wait_ready(c)
        assert c.post(URL, json={"input": "now"}).status_code == 200


def test_a_model_that_fails_to_load_is_reported_not_hidden():
    app = create_app(ServingSettings(model_path="/nonexistent/model"))
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while (r := c.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "config.json is missing" in r.json()["error"] or "nonexistent" in r.json()["error"]


def test_concurrent_requests_are_batched():
    runtime = StubEmbeddingRuntime(seconds_per_batch=0.02)
    from common.engine import Engine

    engine = Engine(runtime, EmbeddingCodec.from_folder())
    with TestClient(create_app(SETTINGS, engine=engine)) as c:
        wait_ready(c)
        threads = [
            threading.Thread(target=c.post, args=(URL,), kwargs={"json": {"input": f"t {i}"}}) for i in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(runtime.batches) == 16
    assert max(runtime.batches) > 1, f"16 concurrent requests were never batched: {runtime.batches}"
    assert max(runtime.batches) <= SETTINGS.max_batch_size


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HPAI_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("HPAI_PRECISION", "int8")
    s = ServingSettings()
    assert s.max_batch_size == 7 and s.precision == "int8"
    monkeypatch.setenv("HPAI_PRECISION", "fp9")
    with pytest.raises(ValueError, match="precision must be one of"):
        ServingSettings()


def test_cli_lists_every_setting_and_rejects_bad_values():
    import subprocess
    import sys

    help_text = subprocess.run(
        [sys.executable, "-m", "common.serving", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--max-batch-size", "--max-queue-delay-ms", "--max-queue-size", "--precision", "--port"):
        assert flag in help_text, flag
    bad = subprocess.run(
        [sys.executable, "-m", "common.serving", "--max-batch-size", "0"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "max_batch_size" in bad.stderr and "greater than or equal to 1" in bad.stderr


def test_a_long_list_is_tokenised_off_the_event_loop_and_a_short_one_on_it():
    engine = stub_engine()
    real, seen = engine.codec.tokenize, {}

    def spy(texts):
        seen[len(texts)] = threading.get_ident()
        return real(texts)

    engine.codec.tokenize = spy
    many = TOKENIZE_ON_LOOP_MAX + 1
    settings = SETTINGS.model_copy(update={"max_inputs_per_request": many})
    with TestClient(create_app(settings, engine=engine)) as c:
        wait_ready(c)
        loop_thread = c.portal.call(threading.get_ident)  # the thread the app's event loop runs on
        for n in (1, many):
            r = c.post(URL, json={"input": [f"text number {i}" for i in range(n)]})
            assert r.status_code == 200, r.text
            assert len(r.json()["data"]) == n
    assert seen[1] == loop_thread and seen[many] != loop_thread
