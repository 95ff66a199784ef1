"""The real server, over real sockets: the model, uvicorn, the batcher and the load generator together."""

import threading
import time

import httpx
import pytest
import uvicorn
from tests.serving.stubs import StubEmbeddingRuntime

from common.engine import Engine
from common.engine.embedding import EmbeddingCodec
from common.serving.app import create_app
from common.serving.loadgen import run_load
from common.serving.server import free_port, server_process
from common.serving.settings import ServingSettings


@pytest.mark.slow
def test_overload_every_request_gets_exactly_one_answer_and_none_is_lost():
    """Far above capacity, with a small queue and a short deadline: 200, 429 or 504, nothing else."""
    with server_process(threads=1, max_batch_size=16, max_queue_size=16, request_timeout_s=0.25) as url:
        # 8 texts a request at 100 requests/s: 800 texts/s, several times what one torch thread embeds,
        # while the client's own request rate stays low enough not to measure the client
        report = run_load(url, rate=100, duration=3, inputs_per_request=8, seed=1, timeout=30, progress=False)
        metrics = httpx.get(f"{url}/metrics").text
    assert sum(report.counts.values()) == report.requests == pytest.approx(300, rel=0.25)
    assert set(report.counts) <= {"200", "429", "504"}, report.counts
    assert report.counts.get("200", 0) > 0, report.counts
    assert report.counts.get("429", 0) + report.counts.get("504", 0) > 0, f"not above capacity: {report.counts}"
    answered = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('hpai_requests_total{endpoint="/v1/embeddings"')
    )
    assert answered == report.requests, "the server must have answered each request the client sent, once"


@pytest.fixture
def stub_server():
    """The app with a slow stub model, in uvicorn on a thread (fast to start, fully controllable)."""
    runtime = StubEmbeddingRuntime(seconds_per_batch=0.4)
    app = create_app(
        ServingSettings(max_batch_size=1, max_queue_delay_ms=0), engine=Engine(runtime, EmbeddingCodec.from_folder())
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.02)
    yield url, runtime
    server.should_exit = True
    thread.join(timeout=10)


def test_a_client_that_hangs_up_is_dropped_before_compute(stub_server):
    url, runtime = stub_server
    busy = threading.Thread(target=httpx.post, args=(f"{url}/v1/embeddings",), kwargs={"json": {"input": "first"}})
    busy.start()  # occupies the only model slot for 0.4 s
    time.sleep(0.1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/embeddings", json={"input": "impatient"}, timeout=0.1)
    busy.join()
    time.sleep(0.2)
    metrics = httpx.get(f"{url}/metrics").text
    assert runtime.batches == [1], f"only the first request should have reached the model: {runtime.batches}"
    assert 'hpai_rejected_requests_total{reason="client_disconnected"} 1.0' in metrics
