"""Run the server in a child process, for notebooks, benchmarks and integration tests.

A separate process is what production looks like, and keeps the load
generator's work off the server's event loop and out of its GIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

import httpx


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None, verify: ssl.SSLContext | bool = True
) -> None:
    """Poll `/readyz` until it says 200; fail early if the process died. `verify`: a client SSL context for
    an https (mutual TLS) server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1.0, verify=verify).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} was not ready after {timeout_s:.0f} s")


class ServerProcess(NamedTuple):
    """A running server: where to reach it, and its process (e.g. for `psutil.Process(pid)`)."""

    url: str
    pid: int


@contextlib.contextmanager
def server_process(
    *,
    threads: int | None = None,
    log_level: str = "warning",
    client_tls: ssl.SSLContext | None = None,
    **settings: object,
) -> Iterator[ServerProcess]:
    """`with server_process(max_batch_size=1) as server:` starts `python -m common.serving` on a free
    loopback port with those settings (as CLI flags), waits until it is ready, yields its URL and
    pid (`server.url`, `server.pid`), and stops it on exit. With `tls_cert`, `tls_key`, `tls_ca` and
    `allowed_clients` the server speaks mutual TLS; `client_tls` (from `common.secure.tls.client_context`)
    is then needed to ask it whether it is ready, and the URL is https."""
    tls = "tls_cert" in settings
    if tls and client_tls is None:
        raise ValueError("a mutual TLS server needs client_tls=client_context(ca, cert, key) to probe /readyz")
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
        args += [f"--{key.replace('_', '-')}", json.dumps(value) if isinstance(value, list | tuple) else str(value)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(args, env=env)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc, verify=client_tls or True)
        yield ServerProcess(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
