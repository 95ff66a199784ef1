"""The peer for benchmarks/serving.py: LitServe serving the same MiniLM at `/v1/embeddings`.

The model loads exactly as `common.serving` loads it (`sentence_encoder().build()`:
AutoModel + mean pooling + L2 norm from the packaged folder, tokenised by the
same `EmbeddingCodec`), and LitServe's own `OpenAIEmbeddingSpec` gives it the
OpenAI request and response shape, so one load generator drives both servers.

    python -m benchmarks.litserve_app --port 8001 --threads 2 --max-batch-size 32 --batch-timeout 0.005

`/readyz` (LitServe's health check, renamed) answers 200 once the worker has
loaded the model, so `common.serving.server.wait_ready` works on it unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import litserve as ls
import numpy as np
import psutil
import torch
from litserve.specs import OpenAIEmbeddingSpec

from common.device import set_thread_count
from common.engine.embedding import EmbeddingCodec, sentence_encoder
from common.serving.server import ServerProcess, free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]


class MiniLMAPI(ls.LitAPI):
    """One inference worker: tokenise and embed a batch of texts, one vector per text.

    `batch_log` (optional) is a JSON-lines file: the worker's torch thread count
    once, then the size and compute time of every batch it ran, so a benchmark can check both.
    """

    def __init__(self, threads: int, batch_log: str | None = None, **options: object):
        super().__init__(spec=OpenAIEmbeddingSpec(), **options)
        self.threads = threads
        self.batch_log = batch_log

    def setup(self, device: str) -> None:
        set_thread_count(self.threads)  # this is a fresh (spawned) process: set it here, not in the parent
        if torch.get_num_threads() != self.threads:
            raise RuntimeError(f"asked for {self.threads} torch threads, got {torch.get_num_threads()}")
        self.codec = EmbeddingCodec.from_folder()
        self.model = sentence_encoder().build().eval()
        self._log = open(self.batch_log, "a", buffering=1) if self.batch_log else None  # noqa: SIM115 (lives with the worker)
        self._write({"pid": os.getpid(), "torch_threads": torch.get_num_threads(), "device": str(device)})
        for _ in range(2):  # warm-up, as `Engine.start` does for ours
            self._embed(["a short warm-up text"] * 2)

    def _embed(self, texts: list[str]) -> np.ndarray:
        inputs = self.codec.encode(self.codec.tokenize(texts))
        with torch.inference_mode():
            out = self.model(torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"]))
        return out.numpy()

    def predict(self, x: str | list[str]) -> np.ndarray:
        # batched, LitServe hands over a list of texts (one per request); unbatched, one text
        texts = [x] if isinstance(x, str) else list(x)
        start = time.perf_counter()
        vectors = self._embed(texts)
        self._write({"batch": len(texts), "ms": (time.perf_counter() - start) * 1e3})
        return vectors

    def _write(self, record: dict[str, object]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")


def serve(port: int, threads: int, max_batch_size: int, batch_timeout: float, batch_log: str | None) -> None:
    api = MiniLMAPI(threads, batch_log, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        healthcheck_path="/readyz",
        fast_queue=True,  # ZeroMQ responses: LitServe's documented setting above ~100 requests/s
    )

    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked API-server process inherited this handler: just exit
            raise SystemExit(0)
        raise KeyboardInterrupt  # LitServe shuts its workers down on Ctrl-C, not on SIGTERM

    signal.signal(signal.SIGTERM, stop)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False, num_api_servers=1)


@contextlib.contextmanager
def litserve_process(
    *, threads: int, max_batch_size: int = 32, batch_timeout: float = 0.005, batch_log: Path | None = None
) -> Iterator[ServerProcess]:
    """`with litserve_process(threads=2) as server:` runs this module on a free loopback port, waits until
    the worker is ready, yields its URL and pid (as `server_process` does), and stops the server and every
    process it started."""
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.litserve_app", "--port", str(port), "--threads", str(threads)]
    args += ["--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout)]
    if batch_log is not None:
        args += ["--batch-log", str(batch_log)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(args, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout_s=180, proc=proc)
        yield ServerProcess(url, proc.pid)
    finally:
        _stop_tree(proc)


def _stop_tree(proc: subprocess.Popen) -> None:
    """Stop the server, then whatever it started that outlived it (LitServe runs 3-4 processes)."""
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    alive = [c for c in children if c.is_running()]
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.litserve_app", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads of the worker")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds LitServe waits for a batch to fill")
    p.add_argument("--batch-log", help="JSON-lines file: the worker's thread count, then every batch size")
    a = p.parse_args(argv)
    serve(a.port, a.threads, a.max_batch_size, a.batch_timeout, a.batch_log)


if __name__ == "__main__":
    main()
