"""`common.serving`: the embeddings server (an async FastAPI app with dynamic batching, back-pressure,
request limits and metrics), the server in a child process, a load generator, the backoff a
client waits before retrying a refused request, and a simulated FIFO queue (latency against load).

    from common.serving import ServingSettings, create_app, server_process
    with server_process(max_batch_size=32) as server:   # python -m common.serving, ready
        scrape_metrics(server.url).get("hpai_model_ready")
"""

from common.serving.app import create_app
from common.serving.batcher import BatcherClosed, BatchPolicy, DeadlineExceeded, DynamicBatcher, QueueFull
from common.serving.body_limit import BodySizeLimit, BodyTooLarge
from common.serving.loading import load_engine
from common.serving.metrics import MetricSamples, ServingMetrics, parse_metrics, scrape_metrics
from common.serving.queueing import mm1_mean_latency, simulate_fifo
from common.serving.retry import Jitter, backoff_delays
from common.serving.server import ServerProcess, free_port, server_process, wait_ready
from common.serving.settings import ServingSettings

__all__ = [
    "BatchPolicy",
    "BatcherClosed",
    "BodySizeLimit",
    "BodyTooLarge",
    "DeadlineExceeded",
    "DynamicBatcher",
    "Jitter",
    "MetricSamples",
    "QueueFull",
    "ServerProcess",
    "ServingMetrics",
    "ServingSettings",
    "backoff_delays",
    "create_app",
    "free_port",
    "load_engine",
    "mm1_mean_latency",
    "parse_metrics",
    "scrape_metrics",
    "server_process",
    "simulate_fifo",
    "wait_ready",
]
