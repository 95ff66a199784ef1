"""Prometheus metrics of the server, one registry per app (no globals, so tests
and notebooks can run several apps in one process), and the client's side: one
scrape of a `/metrics` page, parsed by prometheus_client's own parser.

Names follow Prometheus conventions (base units: seconds, `_total` counters)
and the habits of Triton and vLLM (queue time, compute time and batch size as
separate histograms), all under the `hpai_` prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ENDPOINTS = ("/v1/embeddings", "/v1/models", "/healthz", "/readyz", "/metrics")  # label values; others: "other"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# name -> (type, unit, help): the documented contract, also printed in the module README
METRICS = {
    "hpai_requests_total": ("counter", "requests", "HTTP requests answered, by endpoint and status code"),
    "hpai_request_duration_seconds": ("histogram", "seconds", "end-to-end latency of a request, by endpoint"),
    "hpai_queue_duration_seconds": ("histogram", "seconds", "time a request waited in the batch queue"),
    "hpai_compute_duration_seconds": ("histogram", "seconds", "model time of one batch"),
    "hpai_batch_size": ("histogram", "inputs", "inputs (rows) per executed batch"),
    "hpai_batch_padded_tokens": ("histogram", "tokens", "tokens per executed batch after padding"),
    "hpai_queue_depth": ("gauge", "requests", "requests waiting in the batch queue"),
    "hpai_inflight_requests": ("gauge", "requests", "requests received and not yet answered"),
    "hpai_event_loop_lag_seconds": ("histogram", "seconds", "how late the event loop ran a timer: blocking shows here"),
    "hpai_rejected_requests_total": ("counter", "requests", "requests refused, by reason"),
    "hpai_model_ready": ("gauge", "bool", "1 once the model is loaded and warmed up"),
}


class ServingMetrics:
    """All metrics of one server. Also the batcher's observer."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def doc(name: str) -> str:
            return METRICS[name][2]

        self.requests = Counter("hpai_requests", doc("hpai_requests_total"), ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "hpai_request_duration_seconds",
            doc("hpai_request_duration_seconds"),
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "hpai_queue_duration_seconds", doc("hpai_queue_duration_seconds"), buckets=LATENCY_BUCKETS, registry=r
        )
        self.compute_time = Histogram(
            "hpai_compute_duration_seconds", doc("hpai_compute_duration_seconds"), buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("hpai_batch_size", doc("hpai_batch_size"), buckets=BATCH_BUCKETS, registry=r)
        self.padded_tokens = Histogram(
            "hpai_batch_padded_tokens",
            doc("hpai_batch_padded_tokens"),
            buckets=tuple(b * 64 for b in BATCH_BUCKETS),
            registry=r,
        )
        self.depth = Gauge("hpai_queue_depth", doc("hpai_queue_depth"), registry=r)
        self.inflight = Gauge("hpai_inflight_requests", doc("hpai_inflight_requests"), registry=r)
        self.loop_lag = Histogram(
            "hpai_event_loop_lag_seconds", doc("hpai_event_loop_lag_seconds"), buckets=LAG_BUCKETS, registry=r
        )
        self.rejections = Counter("hpai_rejected_requests", doc("hpai_rejected_requests_total"), ["reason"], registry=r)
        self.ready = Gauge("hpai_model_ready", doc("hpai_model_ready"), registry=r)

    # --- BatcherObserver ---------------------------------------------------

    def queue_depth(self, requests: int) -> None:
        self.depth.set(requests)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def batch_done(self, rows: int, padded_tokens: int, queue_seconds: Sequence[float], compute_seconds: float) -> None:
        self.batch_size.observe(rows)
        self.padded_tokens.observe(padded_tokens)
        self.compute_time.observe(compute_seconds)
        for s in queue_seconds:
            self.queue_time.observe(s)

    # --- exposition --------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def watch_loop_lag(metrics: ServingMetrics, interval_s: float = 0.05) -> None:
    """Sleep `interval_s` again and again and record how late each wake-up is.

    A wake-up can only be late if something held the loop: a blocking call in
    a handler, or CPU-heavy work that should have gone to an executor.
    """
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - start - interval_s))


def observe_duration(metrics: ServingMetrics, endpoint: str, status: int, started: float) -> None:
    metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
    metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)


class MetricsMiddleware:
    """Counts every answer by endpoint and status, times it, and tracks requests in flight.

    The metrics are the app's, from the lifespan state (`scope["state"]["serving"]`); without a
    lifespan there are none and requests pass through uncounted.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = (scope.get("state") or {}).get("serving")
        if scope["type"] != "http" or state is None:
            await self.app(scope, receive, send)
            return
        metrics: ServingMetrics = state.metrics
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"  # bounded label values
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            metrics.inflight.dec()
            observe_duration(metrics, endpoint, status, started)


# --- the client's side: a scrape ---------------------------------------------------------------------

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class MetricSamples:
    """The samples of one scrape (or the difference of two), by name and labels.

    Sample names are the exposition's: `hpai_requests_total`, `hpai_batch_size_sum`, `_count`, `_bucket`.
    `after - before` is what grew between two scrapes; `a + b` sums such differences.
    """

    values: Mapping[tuple[str, Labels], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0.0 when absent (a labelled counter not yet incremented)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over samples `name` whose labels include these, e.g. every status of one endpoint."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= ls)

    def mean(self, histogram: str, **labels: str) -> float | None:
        """A histogram's mean, `_sum / _count` (None with no observations)."""
        count = self.get(f"{histogram}_count", **labels)
        return self.get(f"{histogram}_sum", **labels) / count if count else None

    def __sub__(self, earlier: MetricSamples) -> MetricSamples:
        return MetricSamples({k: v - earlier.values.get(k, 0.0) for k, v in self.values.items()})

    def __add__(self, other: MetricSamples) -> MetricSamples:
        keys = self.values.keys() | other.values.keys()
        return MetricSamples({k: self.values.get(k, 0.0) + other.values.get(k, 0.0) for k in keys})


def parse_metrics(text: str) -> MetricSamples:
    """A Prometheus text exposition, parsed by prometheus_client (not by hand)."""
    return MetricSamples(
        {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
    )


def scrape_metrics(url: str, **httpx_options: Any) -> MetricSamples:
    """`GET {url}/metrics`, parsed. `httpx_options` go to `httpx.get` (e.g. `verify=` for mutual TLS);
    a server with no /metrics raises httpx.HTTPStatusError."""
    options = {"timeout": 5.0, "trust_env": False, **httpx_options}  # no proxy between us and loopback
    response = httpx.get(f"{url}/metrics", **options)
    response.raise_for_status()
    return parse_metrics(response.text)
