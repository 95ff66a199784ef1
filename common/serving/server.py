"""Run the server in a child process, for notebooks, benchmarks and integration tests.

A separate process is what production looks like, and keeps the load
generator's work off the server's event loop and out of its GIL.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `/readyz` until it says 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} was not ready after {timeout_s:.0f} s")


@contextlib.contextmanager
def server_process(*, threads: int | None = None, log_level: str = "warning", **settings: object) -> Iterator[str]:
    """`with server_process(max_batch_size=1) as url:` starts `python -m common.serving` on a free
    loopback port with those settings (as CLI flags), waits until it is ready, yields its URL,
    and stops it on exit."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "common.serving",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    if threads is not None:
        args += ["--threads", str(threads)]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(args, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
