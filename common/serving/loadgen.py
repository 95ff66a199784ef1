"""Open- and closed-loop load for any server that speaks the OpenAI embeddings API.

Open loop is the honest way to find a server's limits: arrivals follow a seeded
Poisson schedule that does not care whether earlier requests have answered, and
latency is measured from each request's *scheduled* send time. A client that
waits for answers before sending (closed loop) or that measures from when it got
round to sending hides every queue it sat in ("coordinated omission"), so its
tail latency looks far better than what users of an overloaded server see.
Closed loop is still useful for a different question: how much can N callers
get through, each waiting for its answer?

Every request ends in exactly one bucket of `LoadReport.counts`: an HTTP status
("200", "429", "504", ...), "timeout", "connection_error", "client_overload" (the
open loop's in-flight cap was hit, so it was never sent), "bad_body" (a 200 whose
body is not one embedding per input), "cancelled" (still unanswered when the
drain window closed) or "error:<Type>" (anything else the client raised).

In a notebook (which already runs an event loop) `await run_open_loop(...)` or
`await run_closed_loop(...)`; in a script call `run_load(...)`; from a shell
`python -m common.serving.loadgen --url http://127.0.0.1:8000 --rate 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import numbers
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
from tqdm import tqdm

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_WORDS = 12
ENDPOINT = "/v1/embeddings"

# Enough words that seeded texts almost never repeat (58**12 ~ 1e21 texts of 12 words),
# so a server-side cache cannot make the run look faster than real traffic.
_WORDS = """
    model server request batch queue token vector embedding latency throughput tail
    cache kernel memory tensor layer attention query document search index shard
    replica cluster network packet socket thread process event loop worker future
    deadline budget overload pressure signal metric gauge counter histogram trace
    secure key cipher manifest weight quantise export graph fusion profile sample
    fast slow steady burst
    """
VOCABULARY = tuple(_WORDS.split())

PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


@dataclass
class LoadReport:
    """What one run measured; latencies are of 200 answers, from scheduled send time."""

    mode: str  # "open" or "closed"
    url: str
    model: str
    rate: float | None  # offered requests/s (open loop)
    concurrency: int | None  # workers (closed loop)
    duration_s: float  # sending window asked for
    elapsed_s: float  # wall time actually taken, drain included
    inputs_per_request: int
    requests: int  # scheduled (open) or sent (closed); always == sum(counts.values())
    counts: dict[str, int]
    throughput_rps: float  # requests that got any HTTP answer, per second
    goodput_rps: float  # 200 answers per second
    embeddings_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    # The same 200s timed from when the client actually sent: what a naive tool reports.
    from_send_ms: dict[str, float | None] = field(default_factory=dict)
    latencies_ms: list[float] | None = field(default=None, repr=False)
    latencies_from_send_ms: list[float] | None = field(default=None, repr=False)

    def to_dict(self, include_latencies: bool = False) -> dict[str, Any]:
        """Plain data for JSON; the raw latency lists only when asked (they can be long)."""
        data = asdict(self)
        if not include_latencies:
            data.pop("latencies_ms")
            data.pop("latencies_from_send_ms")
        return data

    def to_json(self, include_latencies: bool = False, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(include_latencies), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadReport:
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> LoadReport:
        return cls.from_dict(json.loads(text))

    def table(self) -> str:
        """A few aligned lines for a terminal or a notebook cell."""
        if self.mode == "open":
            title = f"open loop, {self.rate:g} req/s (Poisson) for {self.duration_s:g} s"
        else:
            title = f"closed loop, {self.concurrency} workers for {self.duration_s:g} s"
        lines = [
            f"{title} -> {self.url}{ENDPOINT}",
            f"model {self.model}, {self.inputs_per_request} input(s) per request, took {self.elapsed_s:.2f} s",
            f"{'requests':<16}{self.requests:>10}",
        ]
        lines += [f"  {name:<14}{count:>10}" for name, count in sorted(self.counts.items(), key=_bucket_order)]
        lines += [
            f"{'throughput':<16}{self.throughput_rps:>10.1f} req/s answered",
            f"{'goodput':<16}{self.goodput_rps:>10.1f} req/s (200s)",
            f"{'embeddings/s':<16}{self.embeddings_per_s:>10.1f}",
        ]
        headline = {
            "p50": self.p50_ms,
            "p95": self.p95_ms,
            "p99": self.p99_ms,
            "max": self.max_ms,
            "mean": self.mean_ms,
        }
        lines.append(f"latency of 200s, ms from scheduled send: {_format_latency(headline)}")
        if self.mode == "open":
            lines.append(f"  from actual send (hides client lag):   {_format_latency(self.from_send_ms)}")
        return "\n".join(lines)


def _bucket_order(item: tuple[str, int]) -> tuple[int, str]:
    name = item[0]
    return (0, name.zfill(3)) if name.isdigit() else (1, name)


def _format_latency(summary: dict[str, float | None]) -> str:
    if summary.get("p50") is None:
        return "no 200 answers"
    return "  ".join(f"{name} {value:.1f}" for name, value in summary.items() if value is not None)


def _summarise(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ms = np.asarray(latencies_s) * 1e3
    summary: dict[str, float | None] = {name: float(np.percentile(ms, q)) for name, q in PERCENTILES}
    summary["max"] = float(ms.max())
    summary["mean"] = float(ms.mean())
    return summary


# --- traffic: when to send and what ---------------------------------------------------------------


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for the schedule and the texts, so changing one never shifts the other."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    schedule, texts = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(schedule), np.random.default_rng(texts)


def arrival_times(rate: float, duration: float, seed: int = 0) -> np.ndarray:
    """Send times (s from start) of a Poisson process with exactly round(rate * duration) arrivals.

    Cumulative exponential gaps, rescaled so the (n+1)-th arrival lands at
    `duration`: this is exactly a Poisson process conditioned on n arrivals in
    [0, duration), so the offered rate is `rate` on every run, the count is
    bounded, and the schedule never runs past `duration`.
    """
    _check_rate_duration(rate, duration)
    n = round(float(rate * duration))
    gaps = _rngs(seed)[0].exponential(1.0 / rate, size=n + 1)
    edges = np.cumsum(gaps)
    return edges[:n] * (duration / edges[-1])


def _text_stream(words: int, rng: np.random.Generator) -> Callable[[], str]:
    vocab = np.asarray(VOCABULARY)
    return lambda: " ".join(vocab[rng.integers(0, len(vocab), size=words)])


def make_texts(count: int, words: int = DEFAULT_WORDS, seed: int = 0) -> list[str]:
    """The first `count` generated texts a run with this seed sends, in order."""
    next_text = _text_stream(words, _rngs(seed)[1])
    return [next_text() for _ in range(count)]


class _Payloads:
    """Request bodies in a fixed order, so a seed reproduces a run's traffic."""

    def __init__(self, model: str, inputs_per_request: int, words: int, texts: Sequence[str] | None, seed: int):
        self.model = model
        self.inputs_per_request = inputs_per_request
        if texts is None:
            self._next_text = _text_stream(words, _rngs(seed)[1])
        else:
            cycle = iter(_forever(texts))
            self._next_text = lambda: next(cycle)

    def next(self) -> dict[str, Any]:
        inputs = [self._next_text() for _ in range(self.inputs_per_request)]
        # One input goes as a bare string, the API's most common form.
        return {"input": inputs[0] if len(inputs) == 1 else inputs, "model": self.model}


def _forever(texts: Sequence[str]) -> Iterator[str]:
    while True:
        yield from texts


# --- one request ------------------------------------------------------------------------------------


class _Result(NamedTuple):
    bucket: str
    latency_s: float  # from scheduled send
    from_send_s: float  # from when the client actually sent
    embeddings: int


def _classify(response: httpx.Response, n_inputs: int) -> tuple[str, int]:
    if response.status_code != 200:
        return str(response.status_code), 0
    try:
        data = response.json()["data"]
    except (ValueError, KeyError, TypeError):
        return "bad_body", 0
    if not isinstance(data, list) or len(data) != n_inputs:
        return "bad_body", 0
    return "200", n_inputs


async def _send(
    clients: _Clients,
    endpoint: str,
    body: dict[str, Any],
    scheduled: float,
    timeout: float,
    client: int | None = None,
) -> _Result:
    sent = time.perf_counter()
    n_inputs = 1 if isinstance(body["input"], str) else len(body["input"])
    try:
        async with asyncio.timeout(timeout):
            response = await clients.post(endpoint, body, client)
        done = time.perf_counter()
        bucket, embeddings = _classify(response, n_inputs)
    except (TimeoutError, httpx.TimeoutException):
        done, bucket, embeddings = time.perf_counter(), "timeout", 0
    except httpx.TransportError:
        done, bucket, embeddings = time.perf_counter(), "connection_error", 0
    except Exception as exc:  # counted, never lost: every request ends in one bucket
        done, bucket, embeddings = time.perf_counter(), f"error:{type(exc).__name__}", 0
    return _Result(bucket, done - scheduled, done - sent, embeddings)


CONNECTIONS_PER_CLIENT = 8


class _Clients:
    """HTTP clients of at most `CONNECTIONS_PER_CLIENT` connections each, made as load needs them.

    One httpx client with many connections spends O(connections x waiting requests)
    per request in httpcore's pool (encode/httpx#3215): on 2 cores, one client of 64
    connections tops out near 130 requests/s and measures itself, not the server.
    Small clients keep that cost flat. Each request goes to the first client with
    a free connection, so light load reuses one client's keep-alive connections
    and a new client (sharing one TLS context: making one costs ~10 ms) is made
    only when all the others are full.
    """

    def __init__(self, connections: int, timeout: float, given: httpx.AsyncClient | None = None):
        self._timeout = timeout
        self._owned = given is None
        self._count = 1 if given is not None else math.ceil(connections / CONNECTIONS_PER_CLIENT)
        self._clients: list[httpx.AsyncClient] = [] if given is None else [given]
        self._busy: list[int] = [0] * self._count
        self._tls: ssl.SSLContext | None = None
        self._get(0)  # made now, before any clock starts: the TLS context alone takes milliseconds

    def _get(self, i: int) -> httpx.AsyncClient:
        while len(self._clients) <= i:
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            # trust_env=False: a proxy from the environment would sit inside every measurement.
            self._clients.append(
                httpx.AsyncClient(
                    limits=httpx.Limits(
                        max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT
                    ),
                    timeout=httpx.Timeout(self._timeout),
                    verify=self._tls,
                    trust_env=False,
                )
            )
        return self._clients[i]

    def _least_full(self) -> int:
        for i, busy in enumerate(self._busy):
            if busy < CONNECTIONS_PER_CLIENT:
                return i
        return self._busy.index(min(self._busy))

    async def post(self, endpoint: str, body: dict[str, Any], client: int | None = None) -> httpx.Response:
        """POST on `client` (a worker's own), or on the first one with a free connection."""
        i = self._least_full() if client is None else client % self._count
        self._busy[i] += 1
        try:
            return await self._get(i).post(endpoint, json=body)
        finally:
            self._busy[i] -= 1

    async def aclose(self) -> None:
        if self._owned:
            await asyncio.gather(*(c.aclose() for c in self._clients))


# --- the two loops ------------------------------------------------------------------------------------


async def run_open_loop(
    url: str,
    rate: float,
    duration: float,
    *,
    model: str = DEFAULT_MODEL,
    inputs_per_request: int = 1,
    words: int = DEFAULT_WORDS,
    texts: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    drain_timeout: float | None = None,
    seed: int = 0,
    progress: bool = False,
    keep_latencies: bool = False,
    client: httpx.AsyncClient | None = None,
) -> LoadReport:
    """Send Poisson arrivals at `rate` req/s for `duration` s, each on time whatever the server does.

    A request due while `max_in_flight` are unanswered is counted as
    "client_overload" instead of being sent late. After the last send the run
    waits up to `drain_timeout` (default `timeout` + 1 s) for answers, then
    cancels what is left. Pass `client` to reuse one (e.g. with mTLS settings);
    it is not closed and its own connection limits apply.
    """
    _check_url(url)
    _check_options(inputs_per_request, words, texts, timeout)
    if not _is_count(max_in_flight):
        raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
    drain_timeout = timeout + 1.0 if drain_timeout is None else drain_timeout
    if not _is_positive(drain_timeout):
        raise ValueError(f"drain_timeout must be > 0 seconds, got {drain_timeout!r}")
    offsets = arrival_times(rate, duration, seed)
    payloads = _Payloads(model, inputs_per_request, words, texts, seed)
    endpoint = url.rstrip("/") + ENDPOINT

    results: list[_Result] = []
    pending: set[asyncio.Task[_Result]] = set()
    bar = tqdm(total=len(offsets), unit="req", desc="open loop", disable=not progress, file=sys.stderr)

    def on_done(task: asyncio.Task[_Result]) -> None:
        pending.discard(task)
        results.append(_Result("cancelled", 0.0, 0.0, 0) if task.cancelled() else task.result())
        bar.update()

    http = _Clients(max_in_flight, timeout, client)
    start = time.perf_counter()
    try:
        for offset in offsets:
            body = payloads.next()  # drawn even if not sent, so request i always carries the same texts
            scheduled = start + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= max_in_flight:
                results.append(_Result("client_overload", 0.0, 0.0, 0))
                bar.update()
                continue
            task = asyncio.create_task(_send(http, endpoint, body, scheduled, timeout))
            pending.add(task)
            task.add_done_callback(on_done)
        if pending:
            await asyncio.wait(set(pending), timeout=drain_timeout)
    finally:
        # Also runs when the caller is cancelled (Ctrl-C): no request outlives the run.
        leftover = list(pending)
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        await asyncio.sleep(0)  # let the last done-callbacks run
        bar.close()
        await http.aclose()
    elapsed = time.perf_counter() - start
    return _report(
        results,
        len(offsets),
        elapsed,
        keep_latencies,
        mode="open",
        rate=rate,
        concurrency=None,
        url=url,
        model=model,
        duration_s=duration,
        inputs_per_request=inputs_per_request,
    )


async def run_closed_loop(
    url: str,
    concurrency: int,
    duration: float,
    *,
    model: str = DEFAULT_MODEL,
    inputs_per_request: int = 1,
    words: int = DEFAULT_WORDS,
    texts: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = 0,
    progress: bool = False,
    keep_latencies: bool = False,
    client: httpx.AsyncClient | None = None,
) -> LoadReport:
    """`concurrency` workers, each sending its next request as soon as its last one answers.

    No new request starts after `duration`; the last ones finish within `timeout`.
    Latency here is from the actual send: a worker has no schedule to fall behind.
    """
    _check_url(url)
    _check_options(inputs_per_request, words, texts, timeout)
    if not _is_count(concurrency):
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    _check_duration(duration)
    payloads = _Payloads(model, inputs_per_request, words, texts, seed)
    endpoint = url.rstrip("/") + ENDPOINT
    results: list[_Result] = []
    bar = tqdm(unit="req", desc="closed loop", disable=not progress, file=sys.stderr)
    http = _Clients(concurrency, timeout, client)

    async def worker(i: int, deadline: float) -> None:
        # Worker i keeps to client i // CONNECTIONS_PER_CLIENT, so each client serves a fixed few workers.
        while time.perf_counter() < deadline:
            body = payloads.next()
            results.append(await _send(http, endpoint, body, time.perf_counter(), timeout, i // CONNECTIONS_PER_CLIENT))
            bar.update()

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(i, start + duration) for i in range(concurrency)))
    finally:
        bar.close()
        await http.aclose()
    elapsed = time.perf_counter() - start
    return _report(
        results,
        len(results),
        elapsed,
        keep_latencies,
        mode="closed",
        rate=None,
        concurrency=concurrency,
        url=url,
        model=model,
        duration_s=duration,
        inputs_per_request=inputs_per_request,
    )


def _report(results: list[_Result], requests: int, elapsed: float, keep_latencies: bool, **fields: Any) -> LoadReport:
    """Buckets, rates and latency percentiles; `fields` are the report's fields that describe the run."""
    counts = Counter(r.bucket for r in results)
    if sum(counts.values()) != requests:  # a bug in this module, never a server problem
        raise AssertionError(
            f"lost requests: {requests} scheduled but buckets hold {sum(counts.values())}: {dict(counts)}"
        )
    ok = [r for r in results if r.bucket == "200"]
    answered = sum(n for bucket, n in counts.items() if bucket.isdigit() or bucket == "bad_body")
    headline = _summarise([r.latency_s for r in ok])
    return LoadReport(
        **fields,
        elapsed_s=elapsed,
        requests=requests,
        counts=dict(counts),
        throughput_rps=answered / elapsed,
        goodput_rps=len(ok) / elapsed,
        embeddings_per_s=sum(r.embeddings for r in ok) / elapsed,
        p50_ms=headline["p50"],
        p95_ms=headline["p95"],
        p99_ms=headline["p99"],
        max_ms=headline["max"],
        mean_ms=headline["mean"],
        from_send_ms=_summarise([r.from_send_s for r in ok]),
        latencies_ms=[r.latency_s * 1e3 for r in ok] if keep_latencies else None,
        latencies_from_send_ms=[r.from_send_s * 1e3 for r in ok] if keep_latencies else None,
    )


def run_load(
    url: str,
    duration: float,
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    **options: Any,
) -> LoadReport:
    """Blocking wrapper for scripts: open loop if `rate` is given, closed loop if `concurrency` is.

    Notebooks already run an event loop, where `asyncio.run` cannot: there,
    `await run_open_loop(...)` or `await run_closed_loop(...)` directly.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "run_load() cannot run inside a running event loop (Jupyter has one): "
            "use `await run_open_loop(...)` or `await run_closed_loop(...)` instead"
        )
    if (rate is None) == (concurrency is None):
        raise ValueError(
            f"give exactly one of rate (open loop) or concurrency (closed loop), got {rate=}, {concurrency=}"
        )
    if rate is not None:
        return asyncio.run(run_open_loop(url, rate, duration, **options))
    assert concurrency is not None
    return asyncio.run(run_closed_loop(url, concurrency, duration, **options))


# --- validation -------------------------------------------------------------------------------------


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _is_positive(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and float(value) > 0


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    if url.rstrip("/").endswith(ENDPOINT):
        raise ValueError(f"url is the server's base address; {ENDPOINT} is added for you, got {url!r}")


def _check_duration(duration: float) -> None:
    if not _is_positive(duration):
        raise ValueError(f"duration must be a finite number of seconds > 0, got {duration!r}")


def _check_rate_duration(rate: float, duration: float) -> None:
    if not _is_positive(rate):
        raise ValueError(f"rate must be a finite number of requests/s > 0, got {rate!r}")
    _check_duration(duration)
    if round(float(rate * duration)) < 1:
        raise ValueError(f"rate * duration must give at least one request, got {rate} req/s * {duration} s")


def _check_options(inputs_per_request: int, words: int, texts: Sequence[str] | None, timeout: float) -> None:
    if not _is_count(inputs_per_request):
        raise ValueError(f"inputs_per_request must be an integer >= 1, got {inputs_per_request!r}")
    if not _is_count(words):
        raise ValueError(f"words must be an integer >= 1, got {words!r}")
    if not _is_positive(timeout):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if texts is not None:
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r:.80}")
        bad = next((t for t in texts if not isinstance(t, str) or not t), None)
        if bad is not None:
            raise ValueError(f"texts must all be non-empty strings, got {bad!r:.80}")


# --- command line -----------------------------------------------------------------------------------


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _url(text: str) -> str:
    try:
        _check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m common.serving.loadgen",
        description="Load an OpenAI-style embeddings server: open loop (--rate) or closed loop (--concurrency).",
    )
    p.add_argument("--url", type=_url, required=True, help="server base address, e.g. http://127.0.0.1:8000")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=_positive(float), help="open loop: Poisson arrivals, requests/s")
    mode.add_argument("--concurrency", type=_positive(int), help="closed loop: number of workers")
    p.add_argument("--duration", type=_positive(float), default=10.0, help="seconds of sending (default 10)")
    p.add_argument("--inputs-per-request", type=_positive(int), default=1, help="texts per request (default 1)")
    p.add_argument(
        "--words",
        type=_positive(int),
        default=DEFAULT_WORDS,
        help=f"words per generated text (default {DEFAULT_WORDS})",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name sent (default {DEFAULT_MODEL})")
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=DEFAULT_TIMEOUT,
        help=f"per-request timeout, s (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--max-in-flight",
        type=_positive(int),
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"open loop: most unanswered requests; beyond it they count as client_overload (default {DEFAULT_MAX_IN_FLIGHT})",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed for arrivals and texts (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a TTY)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the shell; exit status 2 for bad arguments, 1 if no request got any answer."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.rate is not None and round(args.rate * args.duration) < 1:
        parser.error(f"--rate * --duration must give at least one request, got {args.rate} * {args.duration}")
    if args.json not in (None, "-") and not Path(args.json).parent.is_dir():
        parser.error(f"--json: folder {str(Path(args.json).parent)!r} does not exist")
    options = dict(
        model=args.model,
        inputs_per_request=args.inputs_per_request,
        words=args.words,
        timeout=args.timeout,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if args.rate is not None:
        options["max_in_flight"] = args.max_in_flight
    try:
        report = run_load(args.url, args.duration, rate=args.rate, concurrency=args.concurrency, **options)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # With the JSON on stdout, the table goes to stderr so the JSON stays parseable.
    print(report.table(), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(report.to_json())
    elif args.json:
        Path(args.json).write_text(report.to_json() + "\n")
    if report.throughput_rps == 0:
        print(f"no request got an HTTP answer from {args.url}: see the counts above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
