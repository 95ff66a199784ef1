"""What mutual TLS costs a client: keep-alive request latency over mTLS vs plain HTTP to the same app,
and a full handshake (new connection) vs a keep-alive request.

TLS costs twice: once per connection (the handshake: key exchange and two
certificate signatures, checked both ways) and once per byte (AES-GCM, cheap).
Keep-alive pays the first once, so mTLS should barely move request latency;
a client that reconnects per request pays it every time. Rounds alternate
between the two servers so a drift of the machine hits both alike.

`python -m benchmarks.tls_cost` (from the repository's root) starts a plain and
an mTLS server (same settings, packaged model, one thread each) and prints the
figures as one JSON line per path; module 04's notebook 06 runs it so, and
`benchmarks/security.py` imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np

from common.secure.tls import client_context, client_id, dev_pki
from common.serving.server import server_process


def latencies(
    url: str, n: int, *, verify: ssl.SSLContext | bool = True, reconnect: bool = False, body: dict | None = None
) -> np.ndarray:
    """Seconds per request, one at a time: on one kept-alive connection, or (`reconnect`) on a new
    connection each time (TCP connect + full TLS handshake on https)."""
    limits = httpx.Limits(max_keepalive_connections=0) if reconnect else httpx.Limits()
    out = np.empty(n)
    with httpx.Client(verify=verify, limits=limits, timeout=30) as client:
        send = (lambda: client.post(url, json=body)) if body is not None else (lambda: client.get(url))
        send().raise_for_status()  # warm: the first connection (and the server's first request) is not measured
        for i in range(n):
            start = time.perf_counter()
            send().raise_for_status()
            out[i] = time.perf_counter() - start
    return out


@dataclass(frozen=True)
class TLSCost:
    path: str
    p50_plain_keepalive_ms: float
    p50_mtls_keepalive_ms: float
    p50_plain_reconnect_ms: float
    p50_mtls_reconnect_ms: float

    @property
    def keepalive_ratio(self) -> float:
        """mTLS / plain, both kept alive: the target is at most 1.1."""
        return self.p50_mtls_keepalive_ms / self.p50_plain_keepalive_ms

    @property
    def handshake_ratio(self) -> float:
        """A request on a new mTLS connection / one on a kept-alive mTLS connection."""
        return self.p50_mtls_reconnect_ms / self.p50_mtls_keepalive_ms


def measure(
    plain_url: str,
    tls_url: str,
    verify: ssl.SSLContext,
    *,
    path: str = "/healthz",
    body: dict | None = None,
    n: int = 200,
    rounds: int = 5,
) -> TLSCost:
    """Medians over `rounds` alternating rounds of `n` requests each, for the four ways of calling."""
    samples: dict[str, list[np.ndarray]] = {"pk": [], "tk": [], "pr": [], "tr": []}
    for _ in range(rounds):
        samples["pk"].append(latencies(plain_url + path, n, body=body))
        samples["tk"].append(latencies(tls_url + path, n, verify=verify, body=body))
        samples["pr"].append(latencies(plain_url + path, n, reconnect=True, body=body))
        samples["tr"].append(latencies(tls_url + path, n, verify=verify, reconnect=True, body=body))
    p50 = {k: float(np.median(np.concatenate(v))) * 1e3 for k, v in samples.items()}
    return TLSCost(path, p50["pk"], p50["tk"], p50["pr"], p50["tr"])


@contextlib.contextmanager
def plain_and_mtls_servers(folder: str, **settings: Any) -> Iterator[tuple[str, str, ssl.SSLContext]]:
    """Two `python -m common.serving` processes with the same settings, one plain and one mTLS (dev
    certificates in `folder`); yields both URLs and a client context that the mTLS one accepts."""
    pki = dev_pki(folder, ["bench"])
    verify = client_context(pki.ca_cert, pki.client_cert("bench"), pki.client_key("bench"))
    files: dict[str, Any] = {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_ca": pki.ca_cert}
    with (
        server_process(**settings) as plain,
        server_process(client_tls=verify, allowed_clients=[client_id("bench")], **files, **settings) as mtls,
    ):
        yield plain.url, mtls.url, verify


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls_cost", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("-n", type=int, default=200, help="requests per round and way of calling, on /healthz")
    parser.add_argument("--n-embeddings", type=int, help="the same on /v1/embeddings (default: -n)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    paths = (("/healthz", None, args.n), ("/v1/embeddings", {"input": "a short sentence to embed"}, args.n_embeddings))
    with tempfile.TemporaryDirectory() as folder, plain_and_mtls_servers(folder, threads=1) as (plain, mtls, verify):
        for path, body, n in paths:
            cost = measure(plain, mtls, verify, path=path, body=body, n=n or args.n, rounds=args.rounds)
            print(
                json.dumps(
                    {
                        **asdict(cost),
                        "keepalive_ratio": round(cost.keepalive_ratio, 3),
                        "handshake_ratio": round(cost.handshake_ratio, 2),
                    }
                )
            )


if __name__ == "__main__":
    main()
