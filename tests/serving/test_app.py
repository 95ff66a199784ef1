"""The embeddings app in-process (TestClient) with a stub model: the contract, the errors, and overload."""

import base64
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.engine import Engine
from common.engine.embedding import EmbeddingCodec
from common.serving.app import create_app
from common.serving.metrics import METRICS, parse_metrics
from common.serving.routes import TOKENIZE_ON_LOOP_MAX, TOKENIZE_ON_LOOP_MAX_CHARS
from common.serving.schemas import EmbeddingResponse, ErrorResponse, ModelList
from common.serving.settings import ServingSettings
from tests.serving.stubs import DIM, StubEmbeddingRuntime, stub_engine

SETTINGS = ServingSettings(max_inputs_per_request=8, max_tokens=32, max_batch_size=4, max_queue_delay_ms=1)
URL = "/v1/embeddings"


def wait_ready(client: TestClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.02)


def embeddings(client: TestClient, payload: dict) -> EmbeddingResponse:
    """POST and hold the answer to the documented schema."""
    r = client.post(URL, json=payload)
    assert r.status_code == 200, r.text
    return EmbeddingResponse.model_validate(r.json())


def refusal(r) -> ErrorResponse:
    """An error answer, held to the documented error schema (its code is the HTTP status)."""
    error = ErrorResponse.model_validate(r.json())
    assert error.error.code == r.status_code
    return error


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(SETTINGS, engine=stub_engine())) as c:
        wait_ready(c)
        yield c


def test_one_string_or_a_list_each_get_their_own_vectors_in_order(client):
    tokens = EmbeddingCodec.from_folder().tokenize(["hello", "a much longer sentence than that"])
    body = embeddings(client, {"input": ["hello", "a much longer sentence than that"], "model": SETTINGS.model_name})
    assert body.model == SETTINGS.model_name
    assert [d.index for d in body.data] == [0, 1]
    assert [d.embedding[0] for d in body.data] == [len(t) for t in tokens]
    assert [d.embedding[1] for d in body.data] == [t[1] for t in tokens]
    assert body.usage.model_dump() == {"prompt_tokens": sum(map(len, tokens)), "total_tokens": sum(map(len, tokens))}
    single = embeddings(client, {"input": "hello"})
    assert len(single.data) == 1 and len(single.data[0].embedding) == DIM


def test_base64_encoding_carries_the_same_floats(client):
    plain = embeddings(client, {"input": ["hello world"]}).data[0].embedding
    b64 = embeddings(client, {"input": ["hello world"], "encoding_format": "base64"}).data[0].embedding
    assert isinstance(b64, str)
    assert np.array_equal(np.frombuffer(base64.b64decode(b64), "<f4"), np.array(plain, np.float32))


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"input": []}, 422, "input: expected at least one text, got an empty list"),
        ({"input": ["ok", 3]}, 422, "input[1]: expected a string, got int"),
        ({"input": 3}, 422, "input: expected a string or a list of strings, got int"),
        ({"input": ["ok", "   "]}, 422, "input[1]: text is empty"),
        ({}, 422, "input: Field required"),
        ({"input": "ok", "foo": 1}, 422, "foo: unknown field; expected input, model, encoding_format"),
        ({"input": "ok", "dimensions": 0}, 422, "dimensions: Input should be greater than or equal to 1"),
        ({"input": "ok", "dimensions": DIM - 1}, 400, f"dimensions: this model's embeddings have {DIM} dimensions"),
        ({"input": ["x"] * 9}, 413, "input: 9 texts in one request; the limit is 8"),
        ({"input": ["ok", "word " * 40]}, 413, "input[1]: text is 42 tokens; the limit is 32"),
        ({"input": "ok", "model": "gpt-4"}, 404, "model 'gpt-4' is not served here"),
        ({"input": "ok", "encoding_format": "int8"}, 422, "encoding_format: Input should be 'float' or 'base64'"),
    ],
)
def test_bad_input_names_the_field_and_the_limit(client, payload, status, message):
    r = client.post(URL, json=payload)
    assert r.status_code == status, r.text
    assert refusal(r).error.message.startswith(message), r.text


def test_dimensions_equal_to_the_model_s_own_are_accepted(client):
    assert len(embeddings(client, {"input": "ok", "dimensions": DIM}).data[0].embedding) == DIM


def test_wrong_content_type_and_malformed_json_are_400(client):
    r = client.post(URL, content=b'{"input": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "expected Content-Type: application/json" in refusal(r).error.message
    r = client.post(URL, content=b'{"input": "x"', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in refusal(r).error.message


def test_unknown_paths_and_methods_answer_in_the_error_shape(client):
    assert refusal(client.get("/v2/nothing")).error.code == 404
    assert refusal(client.get(URL)).error.code == 405


def test_models_lists_the_served_model_as_openai_does(client):
    listed = ModelList.model_validate(client.get("/v1/models").json())
    assert [m.id for m in listed.data] == [SETTINGS.model_name]
    assert abs(listed.data[0].created - time.time()) < 3600, "created: the Unix time the server started"
    assert client.get(f"/v1/models/{SETTINGS.model_name}").json()["id"] == SETTINGS.model_name
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and "'gpt-4' is not served here" in refusal(missing).error.message


def test_the_openapi_schema_documents_each_answer(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def body_schema(response: dict) -> dict:
        return response["content"]["application/json"]["schema"]

    post = schema["paths"][URL]["post"]
    assert body_schema(post["requestBody"]) == {"$ref": "#/components/schemas/EmbeddingRequest"}
    assert components["EmbeddingRequest"]["additionalProperties"] is False, "unknown fields are refused"
    assert body_schema(post["responses"]["200"]) == {"$ref": "#/components/schemas/EmbeddingResponse"}
    assert set(components["EmbeddingResponse"]["properties"]) == {"object", "data", "model", "usage"}
    errors = {status for status in post["responses"] if status != "200"}
    assert errors == {"400", "404", "413", "422", "429", "503", "504"}
    for status in errors:
        response = post["responses"][status]
        assert body_schema(response) == {"$ref": "#/components/schemas/ErrorResponse"}, status
        assert response["description"], f"{status}: say when it happens"
    assert "HTTPValidationError" not in components, "FastAPI's default 422 body is not what this server answers"
    models = schema["paths"]["/v1/models"]["get"]["responses"]["200"]
    assert body_schema(models) == {"$ref": "#/components/schemas/ModelList"}


def test_metrics_are_exported_with_their_documented_names(client):
    before = parse_metrics(client.get("/metrics").text)
    client.post(URL, json={"input": "count me"})
    client.post(URL, json={"input": []})
    text = client.get("/metrics").text
    for name, (kind, _, _) in METRICS.items():
        assert f"# TYPE {name} {kind}" in text, name
    grew = parse_metrics(text) - before
    assert grew.get("hpai_requests_total", endpoint=URL, status="200") == 1
    assert grew.get("hpai_requests_total", endpoint=URL, status="422") == 1
    assert grew.get("hpai_rejected_requests_total", reason="invalid") == 1
    assert grew.get("hpai_request_duration_seconds_count", endpoint=URL) == 2
    assert parse_metrics(text).get("hpai_model_ready") == 1


def test_a_body_over_the_limit_is_refused_before_it_is_read():
    """In-process: the 413's shape and its count; the real socket and memory are in test_integration."""
    settings = SETTINGS.model_copy(update={"max_body_bytes": 1000})
    with TestClient(create_app(settings, engine=stub_engine())) as c:
        wait_ready(c)
        declared = c.post(
            URL, content=b'{"input": "' + b"a" * 2000 + b'"}', headers={"content-type": "application/json"}
        )
        chunked = c.post(URL, content=iter([b'{"input": "', b"a" * 600, b"a" * 600, b'"}']))
        fits = c.post(URL, json={"input": "small enough"})
        rejected = parse_metrics(c.get("/metrics").text).get("hpai_rejected_requests_total", reason="too_large")
    assert declared.status_code == 413, declared.text
    assert (
        refusal(declared).error.message
        == "request body is 2013 bytes; the limit is 1000 bytes (setting max_body_bytes)"
    )
    assert declared.headers["connection"] == "close", "the rest of an over-limit upload is never read"
    assert chunked.status_code == 413 and "went past it while being read" in refusal(chunked).error.message
    assert fits.status_code == 200
    assert rejected == 2


def test_healthz_answers_while_readyz_waits_for_the_warmed_model():
    hold = threading.Event()
    app = create_app(SETTINGS, engine=stub_engine(hold_warmup=hold))
    with TestClient(app) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        r = c.post(URL, json={"input": "too early"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert refusal(r).error.message == "model is still loading"
        hold.set()
        wait_ready(c)
        assert c.get("/readyz").json() == {"status": "ready", "model": SETTINGS.model_name, "precision": "fp32"}
        assert c.post(URL, json={"input": "now"}).status_code == 200


def test_a_model_that_fails_to_load_is_reported_not_hidden():
    app = create_app(ServingSettings(model_path="/nonexistent/model"))
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while (r := c.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "config.json is missing" in r.json()["error"]
        refused = c.post(URL, json={"input": "anyone?"})
        assert refused.status_code == 503 and "model failed to load" in refusal(refused).error.message


def test_concurrent_requests_are_batched():
    runtime = StubEmbeddingRuntime(seconds_per_batch=0.02)
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


class Busy:
    """A server whose one model slot is taken by a request held inside a stub model until `release()`."""

    def __init__(self, **settings):
        self.runtime = StubEmbeddingRuntime(hold=threading.Event())
        overrides = {"max_batch_size": 1, "max_queue_delay_ms": 0, **settings}
        self.client = TestClient(
            create_app(SETTINGS.model_copy(update=overrides), engine=Engine(self.runtime, EmbeddingCodec.from_folder()))
        )
        self.answers: dict[str, object] = {}
        self.threads: list[threading.Thread] = []

    def __enter__(self):
        self.client.__enter__()
        wait_ready(self.client)
        self.post_in_background("held")
        assert self.runtime.running.wait(10), "the first request never reached the model"
        return self

    def post_in_background(self, name: str) -> threading.Thread:
        def post():
            self.answers[name] = self.client.post(URL, json={"input": name})

        thread = threading.Thread(target=post)
        thread.start()
        self.threads.append(thread)
        return thread

    def queue_depth(self) -> float:
        return parse_metrics(self.client.get("/metrics").text).get("hpai_queue_depth")

    def release(self):
        self.runtime.hold.set()
        for t in self.threads:
            t.join(10)

    def __exit__(self, *exc):
        self.release()
        self.client.__exit__(*exc)


def test_a_full_queue_answers_429_with_retry_after_at_once():
    with Busy(max_queue_size=1) as busy:
        busy.post_in_background("queued")
        deadline = time.monotonic() + 10
        while busy.queue_depth() < 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        r = busy.client.post(URL, json={"input": "one too many"})
        assert not busy.runtime.hold.is_set()
        assert r.status_code == 429, r.text
        # one request waiting, batches of one, and no batch timed yet (the estimate starts at 50 ms): the 1 s floor
        assert r.headers["retry-after"] == "1"
        assert refusal(r).error.message == "the queue is full (1 requests waiting); retry in 1 s"
        busy.release()
    assert [busy.answers[n].status_code for n in ("held", "queued")] == [200, 200]
    assert busy.runtime.batches == [1, 1], "the refused request never reached the model"


@pytest.mark.parametrize(("retry_after_s", "header"), [(1.2, "2"), (0.3, "1"), (3.0, "3")])
def test_retry_after_is_rounded_up_to_whole_seconds(retry_after_s, header):
    """A client told a fractional wait, rounded down, would come back before the server expects it."""
    import asyncio

    from common.serving.batcher import QueueFull
    from common.serving.errors import _queue_full

    response = asyncio.run(_queue_full(None, QueueFull(4, retry_after_s)))  # type: ignore[arg-type]
    assert response.status_code == 429
    assert response.headers["retry-after"] == header


def test_a_request_past_its_deadline_gets_504_while_the_model_is_still_busy():
    with Busy(request_timeout_s=0.3) as busy:
        started = time.monotonic()
        late = busy.post_in_background("late")
        late.join(10)
        waited = time.monotonic() - started
        assert not late.is_alive() and busy.runtime.hold.is_set() is False, "answered while the model was held"
        r = busy.answers["late"]
        assert r.status_code == 504, r.text
        assert refusal(r).error.message.startswith("request not computed: waited ")
        assert waited >= 0.3, f"a 504 only after the deadline: answered after {waited:.2f} s"
        busy.release()
        assert busy.answers["held"].status_code == 200
    assert busy.runtime.batches == [1], "the expired request never reached the model"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HPAI_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("HPAI_PRECISION", "int8")
    monkeypatch.setenv("HPAI_MAX_BODY_BYTES", "1234")
    s = ServingSettings()
    assert s.max_batch_size == 7 and s.precision == "int8" and s.max_body_bytes == 1234
    monkeypatch.setenv("HPAI_PRECISION", "fp9")
    with pytest.raises(ValueError, match="precision\n  Input should be 'fp32', 'bf16', 'fp16' or 'int8'"):
        ServingSettings()


def test_cli_lists_every_setting_and_rejects_bad_values():
    help_text = subprocess.run(
        [sys.executable, "-m", "common.serving", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--max-batch-size", "--max-queue-delay-ms", "--max-queue-size", "--precision", "--max-body-bytes"):
        assert flag in help_text, flag
    bad = subprocess.run(
        [sys.executable, "-m", "common.serving", "--max-batch-size", "0"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "max_batch_size" in bad.stderr and "greater than or equal to 1" in bad.stderr


def test_large_requests_are_tokenised_off_the_event_loop_and_small_ones_on_it():
    engine = stub_engine()
    real, seen = engine.codec.tokenize, {}

    def spy(texts):
        seen[len(texts), sum(map(len, texts))] = threading.get_ident()
        return real(texts)

    engine.codec.tokenize = spy
    many = TOKENIZE_ON_LOOP_MAX + 1
    long_text = "word " * (TOKENIZE_ON_LOOP_MAX_CHARS // 5 + 1)  # over the characters, under max_tokens: not refused
    settings = SETTINGS.model_copy(update={"max_inputs_per_request": many, "max_tokens": 256})
    with TestClient(create_app(settings, engine=engine)) as c:
        wait_ready(c)
        loop_thread = c.portal.call(threading.get_ident)  # the thread the app's event loop runs on
        for texts in (["short"], [f"text number {i}" for i in range(many)], [long_text]):
            assert len(embeddings(c, {"input": texts}).data) == len(texts)
    on_loop = {key: thread == loop_thread for key, thread in seen.items()}
    assert on_loop == {
        (1, 5): True,
        (many, sum(len(f"text number {i}") for i in range(many))): False,
        (1, len(long_text)): False,
    }
