"""The load generator against a stub embeddings server: counts, rates, and coordinated omission.

The stub (not the real server) runs under uvicorn on a free loopback port in a
background thread, so each test controls exactly how the server misbehaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from common.serving import loadgen
from common.serving.loadgen import LoadReport, run_closed_loop, run_load, run_open_loop

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stub:
    """How the stub behaves (set by a test) and what it saw."""

    url: str = ""
    delay: float = 0.0  # seconds of "work" per request
    serialise: bool = False  # one request at a time, behind a lock: a server with capacity 1/delay
    reject_fraction: float = 0.0  # answer 429 to this fraction of requests, evenly spread
    empty_data: bool = False  # a buggy server: 200 with no embeddings in it
    seen: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    bodies: list[str | list[str]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str


@dataclass
class Current:
    """The stub the server answers as; each test gets a fresh one, so stragglers from the last cannot leak in."""

    stub: Stub = field(default_factory=Stub)


def stub_app(current: Current) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings(request: EmbeddingRequest) -> JSONResponse:
        stub = current.stub
        stub.arrivals.append(time.perf_counter())
        stub.seen += 1
        stub.in_flight += 1
        stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            # Bresenham: exactly floor(n * fraction) of the first n requests are rejected.
            if math.floor(stub.seen * stub.reject_fraction) > math.floor((stub.seen - 1) * stub.reject_fraction):
                return JSONResponse({"error": "overloaded"}, status_code=429, headers={"Retry-After": "1"})
            if stub.serialise:
                async with stub.lock:
                    await asyncio.sleep(stub.delay)
            elif stub.delay:
                await asyncio.sleep(stub.delay)
            texts = [request.input] if isinstance(request.input, str) else request.input
            stub.bodies.append(request.input)
            stub.inputs.extend(texts)
            data = [{"object": "embedding", "embedding": [0.1, 0.2, 0.3], "index": i} for i in range(len(texts))]
            if stub.empty_data:
                data = []
            tokens = sum(len(t.split()) for t in texts)
            return JSONResponse(
                {
                    "object": "list",
                    "data": data,
                    "model": request.model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
        finally:
            stub.in_flight -= 1

    return app


@pytest.fixture(scope="module")
def stub_server() -> Iterator[tuple[str, Current]]:
    """One uvicorn per test module (per xdist worker), on a free loopback port, in a background thread."""
    current = Current()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(stub_app(current), log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.01)
    yield url, current
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def stub(stub_server: tuple[str, Current]) -> Stub:
    url, current = stub_server
    current.stub = Stub(url=url)
    return current.stub


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_every_request_counted(report: LoadReport) -> None:
    assert sum(report.counts.values()) == report.requests


# --- schedule and payload ----------------------------------------------------------------------------


def test_arrivals_are_a_seeded_poisson_schedule():
    times = loadgen.arrival_times(rate=200, duration=5, seed=3)
    assert len(times) == 1000
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < 5
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.15)  # exponential gaps: coefficient of variation 1
    np.testing.assert_array_equal(times, loadgen.arrival_times(200, 5, seed=3))
    assert not np.array_equal(times, loadgen.arrival_times(200, 5, seed=4))


def test_texts_are_deterministic_and_sized():
    texts = loadgen.make_texts(50, words=7, seed=1)
    assert texts == loadgen.make_texts(50, words=7, seed=1)
    assert texts != loadgen.make_texts(50, words=7, seed=2)
    assert all(len(t.split()) == 7 and set(t.split()) <= set(loadgen.VOCABULARY) for t in texts)
    assert len(set(texts)) == 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "rate must be"),
        ({"rate": -5}, "rate must be"),
        ({"duration": 0}, "duration must be"),
        ({"rate": 0.1, "duration": 1}, "at least one request"),
        ({"url": "127.0.0.1:8000"}, "must start with http:// or https://"),
        ({"url": "http://127.0.0.1:8000/v1/embeddings"}, "base address"),
        ({"inputs_per_request": 0}, "inputs_per_request"),
        ({"words": 0}, "words must be"),
        ({"timeout": 0}, "timeout must be"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"texts": "one string"}, "list of strings"),
        ({"texts": ["ok", ""]}, "non-empty strings"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_open_loop_rejects_bad_arguments(kwargs, message):
    args = {"url": "http://127.0.0.1:9", "rate": 10, "duration": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        asyncio.run(run_open_loop(**args))


def test_closed_loop_and_run_load_reject_bad_arguments():
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        asyncio.run(run_closed_loop("http://127.0.0.1:9", 0, 1))
    with pytest.raises(ValueError, match="exactly one of rate"):
        run_load("http://127.0.0.1:9", 1, rate=5, concurrency=2)
    with pytest.raises(ValueError, match="exactly one of rate"):
        run_load("http://127.0.0.1:9", 1)


def test_run_load_in_a_running_loop_says_to_await():
    async def notebook_cell():
        run_load("http://127.0.0.1:9", 1, rate=5)

    with pytest.raises(RuntimeError, match="await run_open_loop"):
        asyncio.run(notebook_cell())


# --- open loop ---------------------------------------------------------------------------------------


def test_open_loop_honours_the_rate(stub):
    report = run_load(stub.url, 2.0, rate=100, seed=5)
    assert report.mode == "open" and report.rate == 100
    assert report.requests == pytest.approx(200, rel=0.25)
    assert report.counts == {"200": report.requests}
    assert stub.seen == report.requests
    # Spread over the whole window, not bunched: the schedule's shape is tested above, without timing noise.
    arrivals = np.sort(stub.arrivals)
    assert 1.6 < arrivals[-1] - arrivals[0] < 3.0  # bounds loose enough for a busy 2-core CI machine
    first_half = np.sum(arrivals < (arrivals[0] + arrivals[-1]) / 2)
    assert 0.35 < first_half / len(arrivals) < 0.65
    assert report.elapsed_s < 2.0 + 2.0
    assert report.goodput_rps == pytest.approx(report.counts["200"] / report.elapsed_s)
    assert report.p50_ms is not None and report.p50_ms <= report.p95_ms <= report.p99_ms <= report.max_ms


def test_payload_size_and_texts_follow_the_seed(stub):
    report = run_load(stub.url, 0.5, rate=40, inputs_per_request=3, words=5, seed=9)
    assert report.counts == {"200": report.requests}
    assert all(isinstance(body, list) and len(body) == 3 for body in stub.bodies)
    assert sorted(stub.inputs) == sorted(loadgen.make_texts(3 * report.requests, words=5, seed=9))
    assert report.embeddings_per_s == pytest.approx(3 * report.goodput_rps)


def test_user_texts_are_sent_in_turn(stub):
    report = run_load(stub.url, 0.5, rate=20, texts=["alpha", "beta"])
    assert report.counts == {"200": 10}
    assert sorted(stub.bodies) == ["alpha"] * 5 + ["beta"] * 5  # one input goes as a bare string


def test_rejections_are_counted_by_status(stub):
    stub.reject_fraction = 0.25
    report = run_load(stub.url, 0.5, rate=80)
    assert_every_request_counted(report)
    assert report.counts == {"200": 30, "429": 10}
    assert report.throughput_rps == pytest.approx(report.goodput_rps * 40 / 30)


def test_a_200_without_the_embeddings_is_not_goodput(stub):
    stub.empty_data = True
    report = run_load(stub.url, 0.25, rate=20)
    assert report.counts == {"bad_body": 5}
    assert report.goodput_rps == 0  # answered, but not usefully
    assert report.throughput_rps == pytest.approx(5 / report.elapsed_s)


def test_progress_bar_counts_answers(stub, capsys):
    run_load(stub.url, 0.25, rate=20, progress=True)
    assert "5/5" in capsys.readouterr().err


def test_timeouts_are_counted(stub):
    stub.delay = 0.6
    report = run_load(stub.url, 0.25, rate=20, timeout=0.15)
    assert report.counts == {"timeout": 5}
    assert report.p99_ms is None and report.goodput_rps == 0
    assert report.elapsed_s < 0.25 + 0.15 + 1.0  # the run did not wait for the slow answers


def test_connection_errors_are_counted(closed_port):
    report = run_load(f"http://127.0.0.1:{closed_port}", 0.25, rate=20)
    assert report.counts == {"connection_error": 5}
    assert report.throughput_rps == 0


def test_in_flight_cap_counts_what_it_does_not_send(stub):
    stub.delay = 0.3
    report = run_load(stub.url, 0.5, rate=40, max_in_flight=3)
    assert_every_request_counted(report)
    assert stub.max_in_flight <= 3
    # what the cap did not send is counted as the client's own overload, and nothing else is lost
    assert stub.seen < report.requests
    assert report.counts == {"200": stub.seen, "client_overload": report.requests - stub.seen}


def test_drain_timeout_cancels_and_counts_stragglers(stub):
    stub.delay = 0.6
    report = run_load(stub.url, 0.2, rate=20, timeout=5, drain_timeout=0.1)
    assert report.counts == {"cancelled": 4}
    assert report.elapsed_s < 0.2 + 0.1 + 1.0  # far less than the 5 s request timeout


# --- coordinated omission -----------------------------------------------------------------------------


def test_open_loop_sees_the_queue_a_closed_loop_hides(stub):
    """Capacity 20 req/s (50 ms each, one at a time): offered 40 req/s, the queue grows all run long."""
    stub.serialise, stub.delay = True, 0.05
    naive = run_load(stub.url, 0.6, concurrency=1)
    honest = run_load(stub.url, 0.75, rate=40, keep_latencies=True)
    assert naive.p50_ms < 100  # the closed loop waits for each answer, so it never sees a queue
    assert honest.counts == {"200": 30}
    assert honest.p99_ms > 300 and honest.p99_ms > 4 * naive.p99_ms
    latencies = honest.latencies_ms  # in order of answer, and the lock is FIFO
    assert np.mean(latencies[-5:]) > 3 * np.mean(latencies[:5])  # waiting grows as the backlog builds


def test_latency_counts_from_the_scheduled_time_not_the_actual_send(stub):
    """A client that stalls (blocked loop, GC pause) sends late; timing from the send would hide it."""

    async def run_with_a_stall():
        async def stall():
            await asyncio.sleep(0.3)
            time.sleep(0.3)  # blocks the client's event loop, as a slow callback would

        staller = asyncio.create_task(stall())
        report = await run_open_loop(stub.url, rate=100, duration=1.0, keep_latencies=True)
        await staller
        return report

    report = asyncio.run(run_with_a_stall())
    assert report.counts == {"200": 100}
    # from-scheduled minus from-send is how long each request waited in the client before going out
    late = np.asarray(report.latencies_ms) - np.asarray(report.latencies_from_send_ms)
    assert np.all(late >= 0)
    assert late.max() > 200 and (late > 100).sum() >= 8  # ~30 requests fell due during the 300 ms stall
    assert report.p99_ms > 200 and report.from_send_ms["p99"] < report.p99_ms


def test_requests_fill_one_small_client_before_the_next_is_made(stub):
    """One big httpx pool costs O(connections x waiting) per request (encode/httpx#3215): keep pools small."""
    stub.delay = 0.2
    per = loadgen.CONNECTIONS_PER_CLIENT
    body = {"input": "a text", "model": "m"}

    async def go() -> tuple[int, int, int]:
        clients = loadgen._Clients(3 * per, timeout=5.0)
        try:
            await clients.post(f"{stub.url}/v1/embeddings", body)  # light load: one client
            light = len(clients._clients)
            await asyncio.gather(*(clients.post(f"{stub.url}/v1/embeddings", body) for _ in range(per + 1)))
            made = len(clients._clients)
            await asyncio.gather(*(clients.post(f"{stub.url}/v1/embeddings", body) for _ in range(5 * per)))
            return light, made, len(clients._clients)
        finally:
            await clients.aclose()

    light, made, most = asyncio.run(go())
    assert (light, made, most) == (1, 2, 3)  # never more clients than connections / per
    assert stub.max_in_flight <= 3 * per


# --- closed loop ---------------------------------------------------------------------------------------


def test_closed_loop_never_exceeds_its_concurrency(stub):
    stub.delay = 0.05
    report = run_load(stub.url, 0.5, concurrency=3)
    assert report.mode == "closed" and report.concurrency == 3
    assert stub.max_in_flight == 3  # reached, never passed
    assert report.counts == {"200": stub.seen} and report.requests == stub.seen
    assert report.requests >= 6  # each worker went round more than once


def test_closed_loop_counts_failures(closed_port):
    report = run_load(f"http://127.0.0.1:{closed_port}", 0.2, concurrency=2)
    assert report.counts == {"connection_error": report.requests}
    assert report.requests > 2, "each of the 2 workers carries on after its first failure"


# --- report and command line ---------------------------------------------------------------------------


def test_report_round_trips_through_json(stub):
    stub.reject_fraction = 0.5
    report = run_load(stub.url, 0.25, rate=40, keep_latencies=True)
    assert report.latencies_ms is not None and len(report.latencies_ms) == report.counts["200"]
    data = json.loads(report.to_json())
    assert "latencies_ms" not in data and data["counts"] == {"200": 5, "429": 5}
    assert LoadReport.from_json(report.to_json()) == dataclasses.replace(
        report, latencies_ms=None, latencies_from_send_ms=None
    )
    assert LoadReport.from_json(report.to_json(include_latencies=True)) == report
    table = report.table()
    assert "open loop" in table and "429" in table and "p99" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://127.0.0.1:9", "--rate", "5", "--concurrency", "2"], "not allowed with argument"),
        (["--url", "http://127.0.0.1:9"], "one of the arguments --rate --concurrency is required"),
        (["--url", "localhost:8000", "--rate", "5"], "must start with http:// or https://"),
        (["--url", "http://127.0.0.1:9", "--rate", "-5"], "must be > 0"),
        (["--url", "http://127.0.0.1:9", "--concurrency", "0"], "must be > 0"),
        (["--url", "http://127.0.0.1:9", "--concurrency", "1.5"], "expected int"),
        (["--url", "http://127.0.0.1:9", "--rate", "0.01", "--duration", "1"], "at least one request"),
        (["--rate", "5"], "--url"),
        (["--url", "http://127.0.0.1:9", "--rate", "5", "--json", "/no/such/folder/r.json"], "does not exist"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        loadgen.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_cli_writes_json_report(stub, tmp_path):
    path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "common.serving.loadgen", "--url", stub.url, "--rate", "20", "--duration", "0.5"]
    cmd += ["--inputs-per-request", "2", "--json", str(path), "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = LoadReport.from_json(path.read_text())
    assert report.counts == {"200": 10} and report.inputs_per_request == 2
    assert "goodput" in proc.stdout


def test_cli_json_to_stdout_and_failure_status(closed_port, capsys):
    url = f"http://127.0.0.1:{closed_port}"
    assert loadgen.main(["--url", url, "--concurrency", "1", "--duration", "0.1"]) == 1  # nothing answered
    assert "no request got an HTTP answer" in capsys.readouterr().err
    assert loadgen.main(["--url", url, "--rate", "20", "--duration", "0.1", "--json", "-"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["counts"] == {"connection_error": 2}  # stdout holds only the JSON
    assert "connection_error" in out.err  # the table went to stderr
