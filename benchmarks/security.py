"""What the secure pipeline costs (module 04): envelope throughput against OpenSSL, an encrypted and signed model
load against a plain safetensors load, key re-wrap cost against artifact size, and mutual TLS against plain HTTP.

Envelope: `encrypt_stream` / `decrypt_stream` (the envelope's default 1 MiB chunks, 64 x 16 KiB; and 16 KiB
chunks, no target) from a payload in memory into a sink that keeps nothing, so neither the allocator nor the
disk is timed; against `openssl speed -evp aes-256-gcm -bytes 16384 -seconds 1` run in the same process
tree, rounds interleaved (openssl, ours, openssl, ours, ...), both in CPU time (what `openssl speed` divides
by; the envelope's thread is timed with `time.thread_time`). OpenSSL's figure is its encryption rate; GCM
decrypts at the same speed, so both directions are read against it. Our times include everything the
envelope does per artifact (the data key's RSA-OAEP wrap or unwrap, HKDF, the header MAC).

Model load: `weights.load_model_folder` on an `encrypt_model_folder` copy of all-MiniLM-L6-v2 (signature,
SHA-256 of every file, decryption into memory) against `safetensors.torch.load_file` of the same weights.
The plain baseline that does the same work minus the cryptography is `backend="pread"`: every byte is read
into this process's memory, as the encrypted load must. The default (`mmap`) maps the file and reads
nothing until a tensor is touched, so it is reported twice, as called and with every page touched, but is
not the target's baseline: encrypted weights cannot be mapped from disk, which is part of what they cost.
SHA-256 of the artifact alone is reported too: the signature check must hash every byte.

Re-wrap: `envelope.rewrap` of a 1 GiB artifact and of a 1 KiB one, alternating, each time to the other of
two KEKs (it rewrites the key slot and the header tag, then fsyncs). mTLS: `benchmarks.tls_cost` with
a plain and an mTLS server (the packaged model, one torch thread each): p50 per request on kept-alive
connections, and on a new connection per request (TCP + full TLS 1.3 handshake with both certificates).

Targets are printed as ratios with met / MISSED, never asserted: envelope encrypt and decrypt >= 0.7x
OpenSSL; encrypted, signed load <= 1.3x the plain load; keep-alive mTLS p50 <= 1.1x plain HTTP on
/v1/embeddings (the service's request; /healthz, the worst case, is printed beside it); re-wrap of 1 GiB
<= 1.5x re-wrap of 1 KiB.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import safetensors.torch
import torch

from benchmarks.tls_cost import measure as tls_measure
from benchmarks.tls_cost import plain_and_mtls_servers
from common import bench
from common.engine.embedding import MINILM_NAME, minilm_path
from common.secure.envelope import DEFAULT_CHUNK_SIZE, decrypt_stream, encrypt_bytes, encrypt_stream, rewrap
from common.secure.keys import Keyset, LocalRSAKey
from common.secure.weights import WEIGHTS_FILE, encrypt_model_folder, load_model_folder

OPENSSL = ["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "1"]
PASSWORD = b"benchmark-keyset-password"
ENVELOPE_TARGET, LOAD_TARGET, TLS_TARGET, REWRAP_TARGET = 0.7, 1.3, 1.1, 1.5
CHUNKS = {"1 MiB chunks (default)": DEFAULT_CHUNK_SIZE, "16 KiB chunks": 16 << 10}


class _Discard:
    """A `dst` that keeps nothing and allocates nothing: only the envelope's own work is timed."""

    def write(self, data: Any) -> int:
        return len(data)


class _Repeat:
    """A `src` of `size` bytes made of one block over and over: a large artifact without a large plaintext."""

    def __init__(self, block: bytes, size: int):
        self.block, self.left = memoryview(block), size

    def readinto(self, view: memoryview) -> int:
        n = min(len(view), len(self.block), self.left)
        view[:n] = self.block[:n]
        self.left -= n
        return n


# --- envelope vs openssl -------------------------------------------------------------------------------------


def openssl_gcm_bytes_per_s() -> float:
    """`openssl speed -evp aes-256-gcm` on 16 KiB blocks for one second, in bytes/s."""
    out = subprocess.run(OPENSSL, capture_output=True, text=True, check=True).stdout
    found = re.search(r"^AES-256-GCM\s+([\d.]+)k\s*$", out, re.MULTILINE)
    if not found:
        raise RuntimeError(f"could not read the AES-256-GCM rate from `{' '.join(OPENSSL)}`:\n{out}")
    return float(found.group(1)) * 1e3  # openssl reports thousands of bytes per second


def _seconds(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def envelope(quick: bool, keyset: Keyset) -> tuple[list[dict[str, Any]], dict[str, float]]:
    size = (8 if quick else 256) << 20
    rounds, calls = (1, 2) if quick else (5, 3)
    payload = os.urandom(size)
    sealed = {name: encrypt_bytes(payload, keyset, chunk_size=c) for name, c in CHUNKS.items()}

    def encrypt(chunk_size: int) -> None:
        encrypt_stream(io.BytesIO(payload), _Discard(), keyset, chunk_size=chunk_size)

    def decrypt(name: str) -> None:
        decrypt_stream(io.BytesIO(sealed[name]), _Discard(), keyset)

    runs: dict[str, list[float]] = {"openssl": []}
    ratios: dict[str, list[float]] = {"encrypt": [], "decrypt": []}
    for _ in range(rounds):
        runs["openssl"].append(openssl_gcm_bytes_per_s())
        for name, chunk in CHUNKS.items():
            # CPU time of this thread, as `openssl speed` divides by its CPU time: other jobs move neither figure
            enc = [size / _seconds(functools.partial(encrypt, chunk), time.thread_time) for _ in range(calls)]
            dec = [size / _seconds(functools.partial(decrypt, name), time.thread_time) for _ in range(calls)]
            runs.setdefault(f"encrypt, {name}", []).append(statistics.median(enc))
            runs.setdefault(f"decrypt, {name}", []).append(statistics.median(dec))
        default = next(iter(CHUNKS))
        for way in ratios:
            ratios[way].append(runs[f"{way}, {default}"][-1] / runs["openssl"][-1])
    rows = [
        {
            "part": "envelope",
            "name": name,
            "gb_s": statistics.median(rates) / 1e9,
            "gb_s_per_round": [r / 1e9 for r in rates],
            "payload_bytes": size,
        }
        for name, rates in runs.items()
    ]
    for row in rows:
        print(f"envelope {row['name']:35s} {row['gb_s']:6.2f} GB/s")
    return rows, {way: statistics.median(r) for way, r in ratios.items()}


# --- encrypted load vs plain safetensors ---------------------------------------------------------------------


def _touch(tensors: dict[str, torch.Tensor]) -> int:
    """Read one byte of every 4 KiB page of every tensor: what the first forward pass makes a lazy load pay."""
    return sum(int(t.reshape(-1).view(torch.uint8)[::4096].sum()) for t in tensors.values() if t.numel())


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, bench.Timing]:
    """One call of each per round, the order rotated every round, so drift hits all of them alike."""
    names = list(fns)
    for fn in fns.values():
        fn()  # warm: page cache, imports, first-call allocations
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(_seconds(fns[name]))
    return {n: bench.Timing(n, tuple(s)) for n, s in samples.items()}


def model_load(quick: bool, keyset: Keyset, folder: Path) -> tuple[list[dict[str, Any]], float]:
    encrypted = encrypt_model_folder(minilm_path(), folder / "minilm", keyset, keyset.signing_key())
    plain, verify = minilm_path() / "model.safetensors", keyset.verify_key()
    fns = {
        "encrypted + signed (load_model_folder)": lambda: load_model_folder(encrypted, keyset, verify),
        "plain, load_file(backend='pread')": lambda: safetensors.torch.load_file(plain, backend="pread"),
        "plain, load_file (mmap) + touch every page": lambda: _touch(safetensors.torch.load_file(plain)),
        "plain, load_file (mmap), as called": lambda: safetensors.torch.load_file(plain),
        "SHA-256 of the encrypted artifact": lambda: _sha256(encrypted / WEIGHTS_FILE),
    }
    timings = interleaved(fns, repeat=3 if quick else 15)
    enc, base = timings[next(iter(fns))], timings["plain, load_file(backend='pread')"]
    ratio = statistics.median(e / b for e, b in zip(enc.seconds, base.seconds, strict=True))
    rows = [{"part": "model load", **t.row(), "bytes": plain.stat().st_size} for t in timings.values()]
    for row in rows:
        print(f"load {row['name']:45s} {row['median_ms']:7.1f} ms")
    return rows, ratio


# --- re-wrap cost vs artifact size ---------------------------------------------------------------------------


def rewrap_cost(quick: bool, folder: Path) -> tuple[list[dict[str, Any]], float, str]:
    keyset = Keyset()
    first, second = LocalRSAKey.generate(), LocalRSAKey.generate()
    keyset.add(first, primary=True)
    keyset.add(second)
    sizes = {"1 KiB": 1 << 10, ("16 MiB" if quick else "1 GiB"): (16 << 20) if quick else (1 << 30)}
    paths = {}
    for name, size in sizes.items():
        paths[name] = folder / f"artifact-{size}.enc"
        with open(paths[name], "wb") as dst:
            encrypt_stream(_Repeat(os.urandom(1 << 20), size), dst, keyset)
            dst.flush()
            os.fsync(dst.fileno())  # the body is on disk before anything is timed
    samples: dict[str, list[float]] = {n: [] for n in sizes}
    keys = [second, first]
    for r in range(5 if quick else 20):
        keyset.set_primary(keys[r % 2].key_id)
        for name in list(sizes)[:: 1 if r % 2 else -1]:
            samples[name].append(_seconds(functools.partial(rewrap, paths[name], keyset)))
    small, big = list(sizes)
    ratio = statistics.median(b / s for b, s in zip(samples[big], samples[small], strict=True))
    rows = [
        {"part": "re-wrap", **bench.Timing(f"re-wrap {n}", tuple(s)).row(), "bytes": paths[n].stat().st_size}
        for n, s in samples.items()
    ]
    for row in rows:
        print(f"{row['name']:14s} ({row['bytes']:>11,d} bytes on disk) {row['median_ms']:6.2f} ms")
    return rows, ratio, f"re-wrap {big} / re-wrap {small}"


# --- mutual TLS vs plain HTTP --------------------------------------------------------------------------------


def tls(quick: bool, folder: Path) -> list[dict[str, Any]]:
    calls = {  # path, body, requests per round and way of calling
        "/healthz": (None, 20 if quick else 200),
        "/v1/embeddings": ({"input": "a short sentence to embed"}, 10 if quick else 100),
    }
    rows = []
    with plain_and_mtls_servers(str(folder), threads=1) as (plain, mtls, verify):
        for path, (body, n) in calls.items():
            cost = tls_measure(plain, mtls, verify, path=path, body=body, n=n, rounds=1 if quick else 5)
            rows.append(
                {
                    "part": "tls",
                    **asdict(cost),
                    "keepalive_ratio": cost.keepalive_ratio,
                    "handshake_ratio": cost.handshake_ratio,
                    "handshake_ms": cost.p50_mtls_reconnect_ms - cost.p50_mtls_keepalive_ms,
                    "requests_per_round": n,
                }
            )
            print(
                f"tls {path:15s} p50 keep-alive: plain {cost.p50_plain_keepalive_ms:.2f} ms, mTLS "
                f"{cost.p50_mtls_keepalive_ms:.2f} ms; new connection each: plain {cost.p50_plain_reconnect_ms:.2f}"
                f" ms, mTLS {cost.p50_mtls_reconnect_ms:.2f} ms"
            )
    return rows


# --- run -----------------------------------------------------------------------------------------------------


def targets(ratios: dict[str, float], tls_rows: list[dict[str, Any]], rewrap_name: str) -> list[dict[str, Any]]:
    by_path = {r["path"]: r for r in tls_rows}
    out = [
        {"target": "envelope encrypt / openssl AES-256-GCM", "value": ratios["encrypt"], "at_least": ENVELOPE_TARGET},
        {"target": "envelope decrypt / openssl AES-256-GCM", "value": ratios["decrypt"], "at_least": ENVELOPE_TARGET},
        {"target": "encrypted, signed load / plain load (pread)", "value": ratios["load"], "at_most": LOAD_TARGET},
        {
            "target": "keep-alive mTLS / plain HTTP p50, /v1/embeddings",
            "value": by_path["/v1/embeddings"]["keepalive_ratio"],
            "at_most": TLS_TARGET,
        },
        {"target": rewrap_name, "value": ratios["rewrap"], "at_most": REWRAP_TARGET},
        {"target": "keep-alive mTLS / plain HTTP p50, /healthz", "value": by_path["/healthz"]["keepalive_ratio"]},
        {
            "target": "new mTLS connection / keep-alive mTLS request, /healthz",
            "value": by_path["/healthz"]["handshake_ratio"],
        },
    ]
    for t in out:
        t["met"] = (
            t["value"] >= t["at_least"] if "at_least" in t else t["value"] <= t["at_most"] if "at_most" in t else None
        )
    return out


def plot(rows: list[dict[str, Any]], goals: list[dict[str, Any]], path: Path, quick: bool) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), layout="constrained")
    env = [r for r in rows if r["part"] == "envelope"]
    ax = axes[0][0]
    ax.barh([r["name"] for r in env], [r["gb_s"] for r in env], color=["tab:gray"] + ["tab:blue"] * (len(env) - 1))
    openssl = env[0]["gb_s"]
    ax.axvline(ENVELOPE_TARGET * openssl, color="tab:green", ls=":", lw=1)
    ax.text(ENVELOPE_TARGET * openssl, len(env) - 0.6, f" {ENVELOPE_TARGET:g} x openssl", color="tab:green", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s, one core")
    ax.set_title(f"AES-256-GCM: envelope streams vs openssl speed ({env[0]['payload_bytes'] >> 20} MiB payload)")
    load = [r for r in rows if r["part"] == "model load"]
    bench.labelled_barh(
        axes[0][1], [r["name"] for r in load], [r["median_ms"] for r in load],
        fmt=".1f", xlabel="ms (median)", title=f"loading {MINILM_NAME} ({load[0]['bytes'] / 1e6:.0f} MB of weights)",
    )  # fmt: skip
    wrap = [r for r in rows if r["part"] == "re-wrap"]
    ax = axes[1][0]
    ax.bar([r["name"] for r in wrap], [r["median_ms"] for r in wrap], color="tab:purple")
    ax.set_ylabel("ms (median)")
    ax.set_title("re-wrap after rotation: key slot + header tag + fsync")
    tls_rows = [r for r in rows if r["part"] == "tls"]
    ax = axes[1][1]
    ways = [
        ("plain, keep-alive", "p50_plain_keepalive_ms"),
        ("mTLS, keep-alive", "p50_mtls_keepalive_ms"),
        ("plain, new conn.", "p50_plain_reconnect_ms"),
        ("mTLS, new conn.", "p50_mtls_reconnect_ms"),
    ]
    width = 0.2
    for i, (label, key) in enumerate(ways):
        ax.bar([j + i * width for j in range(len(tls_rows))], [r[key] for r in tls_rows], width, label=label)
    ax.set_xticks([j + 1.5 * width for j in range(len(tls_rows))], [r["path"] for r in tls_rows])
    ax.set_ylabel("p50 ms per request")
    ax.set_title("mutual TLS vs plain HTTP, one request at a time")
    ax.legend(fontsize=8)
    summary = "; ".join(f"{t['target']}: {t['value']:.2f}" for t in goals if t["met"] is not None)
    bench.save_figure(fig, path, "security costs", quick, summary)


def run(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hpai-security-bench-") as tmp:
        folder = Path(tmp)
        keyset = Keyset.generate(folder / "keyset", PASSWORD)
        env_rows, ratios = envelope(quick, keyset)
        load_rows, ratios["load"] = model_load(quick, keyset, folder)
        wrap_rows, ratios["rewrap"], rewrap_name = rewrap_cost(quick, folder)
        tls_rows = tls(quick, folder / "pki")
    goals = targets(ratios, tls_rows, rewrap_name)
    bench.print_targets(goals)
    rows = env_rows + load_rows + wrap_rows + tls_rows
    bench.save_results(
        out / "security.json",
        rows,
        benchmark="security",
        quick=quick,
        openssl=" ".join(OPENSSL),
        openssl_version=subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
        targets=goals,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )
    plot(rows, goals, out / "security.png", quick)
    return rows
