"""What serving costs and what dynamic batching buys, embedding single texts with all-MiniLM-L6-v2.

Four ways to run the same model on the same machine, in one run:
(a) our server (`common.serving`) with `max_batch_size=1`; (b) our server batched
(32 rows, 5 ms); (c) LitServe with the same batch settings and LitServe's own
OpenAI embeddings spec (`benchmarks/litserve_app.py`); (d) the offline ceiling,
tokenise + `Engine.infer` on batches of 32 in this process, with no HTTP at all.

The ceiling comparison needs one more pair. Here the load generator shares the
machine with the server (on 2 cores it takes about a third of a core, and every
core it takes also stalls torch's other thread at its next barrier), so an
all-core server cannot reach an all-core ceiling that had the machine to itself.
A real load test puts the client on another machine; this one leaves it a core
instead: the batched server and the ceiling are measured again with
`cores - 1` torch threads each, and the 0.8x target is read from that pair. The
all-core ratio is printed and saved too.

Every server runs in child processes with the same torch threads (all cores,
checked); the load generator runs here. Per server: embeddings/s at saturation
(closed loop, 64 callers, single-text requests of 12 words) and p99 latency at
one open-loop rate below saturation (half the unbatched server's saturation
throughput, the same rate for every server). The course's claims are printed as
ratios, never asserted: a missed target shows in the numbers.

Fairness on a noisy machine: all servers are up at once but only the one under
load runs (the others are paused with SIGSTOP: an idle LitServe polls its queues),
and the measurements alternate in rounds (a, b, c, then b, c, a, ...) so drift
hits every server alike, as `common.bench.compare` does for functions.

The load generator spreads the 64 callers over HTTP clients of 8 connections
each (`common.serving.loadgen`): one httpx client with 64 connections tops out
near 130 requests/s on a 2-core machine and would measure itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import psutil

from common import bench
from common.device import set_thread_count
from common.engine import build_engine
from common.engine.embedding import MINILM_NAME, EmbeddingCodec, sentence_encoder
from common.serving.loadgen import LoadReport, make_texts, run_closed_loop, run_open_loop
from common.serving.metrics import MetricSamples, scrape_metrics
from common.serving.server import server_process

MAX_BATCH = 32
DELAY_MS = 5.0
CONCURRENCY = 64
WORDS = 12
OPEN_FRACTION = 0.5  # of the unbatched server's saturation throughput

SERVERS = ("ours, unbatched", "ours, batched", "LitServe, batched")
CEILING = "offline ceiling"
# The same server and ceiling with one core left to the load generator (see the module docstring).
BUDGET_SERVER = "ours, batched, cores-1"
BUDGET_CEILING = "offline ceiling, cores-1"
TARGETS = (  # (name, numerator, denominator, at least): ratios of saturation throughput
    ("batched / unbatched", "ours, batched", "ours, unbatched", 3.0),
    ("batched / offline ceiling, same CPU budget", BUDGET_SERVER, BUDGET_CEILING, 0.8),
    ("batched / LitServe", "ours, batched", "LitServe, batched", 1.0),
)
REPORTED = (  # printed and saved, no target: what the load generator's CPU costs the all-core server
    ("batched / offline ceiling, all cores", "ours, batched", CEILING),
)


@dataclass(frozen=True)
class Plan:
    warmup_s: float  # closed loop per server before anything is measured
    rounds: int  # each round loads every server once, in a rotated order
    closed_s: float  # per server per round
    open_s: float  # per server per round


FULL = Plan(warmup_s=2.0, rounds=3, closed_s=3.0, open_s=3.0)
QUICK = Plan(warmup_s=0.3, rounds=1, closed_s=1.0, open_s=1.0)


# --- load ------------------------------------------------------------------------------------------


def combine(parts: list[LoadReport], elapsed: float, **overrides: Any) -> LoadReport:
    """One report from runs side by side (`elapsed`: the longest) or one after another (the sum)."""
    counts: Counter[str] = Counter()
    for p in parts:
        counts.update(p.counts)
    latencies = [ms for p in parts for ms in p.latencies_ms or ()]
    from_send = [ms for p in parts for ms in p.latencies_from_send_ms or ()]
    headline = _percentiles(latencies)
    return dataclasses.replace(
        parts[0],
        elapsed_s=elapsed,
        requests=sum(p.requests for p in parts),
        counts=dict(counts),
        throughput_rps=sum(p.throughput_rps * p.elapsed_s for p in parts) / elapsed,
        goodput_rps=sum(p.goodput_rps * p.elapsed_s for p in parts) / elapsed,
        embeddings_per_s=sum(p.embeddings_per_s * p.elapsed_s for p in parts) / elapsed,
        p50_ms=headline["p50"],
        p95_ms=headline["p95"],
        p99_ms=headline["p99"],
        max_ms=headline["max"],
        mean_ms=headline["mean"],
        from_send_ms=_percentiles(from_send),
        latencies_ms=latencies,
        latencies_from_send_ms=from_send,
        **overrides,
    )


def _percentiles(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return dict.fromkeys(("p50", "p95", "p99", "max", "mean"))
    a = np.asarray(ms)
    summary: dict[str, float | None] = {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}
    return summary | {"max": float(a.max()), "mean": float(a.mean())}


# --- what the server and the machine did meanwhile ----------------------------------------------------


def scrape(url: str) -> MetricSamples:
    """Our server's /metrics; empty for a server without it (LitServe)."""
    try:
        return scrape_metrics(url)
    except httpx.HTTPStatusError:
        return MetricSamples()


def server_stats(d: MetricSamples) -> dict[str, float | None]:
    """Means over a phase from the increase `d` of our counters and histograms."""

    def ms(mean: float | None) -> float | None:
        return None if mean is None else mean * 1e3

    return {
        "mean_batch_size": d.mean("hpai_batch_size"),
        "batches": d.get("hpai_batch_size_count"),
        "server_mean_ms": ms(d.mean("hpai_request_duration_seconds", endpoint="/v1/embeddings")),
        "queue_mean_ms": ms(d.mean("hpai_queue_duration_seconds")),
        "compute_mean_ms": ms(d.mean("hpai_compute_duration_seconds")),
        "padded_tokens_per_batch": d.mean("hpai_batch_padded_tokens"),
        "loop_lag_mean_ms": ms(d.mean("hpai_event_loop_lag_seconds")),
        "rejected": d.total("hpai_rejected_requests_total"),
    }


def _cpu_seconds(server: list[psutil.Process]) -> tuple[float, float, float, float]:
    """(wall clock, CPU seconds of the server's processes, of this process, of the whole machine)."""
    busy = psutil.cpu_times()
    machine = sum(busy) - busy.idle - getattr(busy, "iowait", 0.0)
    ours = sum(sum(p.cpu_times()[:2]) for p in server if p.is_running())
    return time.perf_counter(), ours, sum(psutil.Process().cpu_times()[:2]), machine


@dataclass
class Phase:
    """What one server did under one kind of load, summed over rounds."""

    reports: list[LoadReport] = field(default_factory=list)
    metrics: MetricSamples = field(default_factory=MetricSamples)  # increase of /metrics counters
    batches: list[dict[str, float]] = field(default_factory=list)  # LitServe's worker log: size, ms
    cpu: np.ndarray = field(default_factory=lambda: np.zeros(4))  # wall, server, client, machine seconds

    def report(self) -> LoadReport:
        return combine(self.reports, sum(r.elapsed_s for r in self.reports), duration_s=self.duration)

    @property
    def duration(self) -> float:
        return sum(r.duration_s for r in self.reports)

    def stats(self) -> dict[str, Any]:
        wall, server, client, machine = self.cpu
        stats = server_stats(self.metrics)
        if self.batches:  # LitServe has no /metrics: its worker logs every batch instead
            stats["mean_batch_size"] = float(np.mean([b["batch"] for b in self.batches]))
            stats["batches"] = len(self.batches)
            stats["compute_mean_ms"] = float(np.mean([b["ms"] for b in self.batches]))
        return stats | {
            "server_cpu_cores": server / wall,
            "client_cpu_cores": client / wall,
            "other_cpu_cores": max(0.0, (machine - server - client) / wall),
        }


# --- the servers ----------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    processes: list[psutil.Process]  # the server's process and every process it started
    startup_s: float
    batch_log: Path | None = None  # LitServe's worker log (thread count, batch sizes)
    phases: dict[str, Phase] = field(default_factory=lambda: {k: Phase() for k in ("warmup", "closed", "open")})

    def pause(self) -> None:
        for p in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()

    def resume(self) -> None:
        for p in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()

    def batches(self) -> list[dict[str, float]]:
        return _read_batch_log(self.batch_log)[1]

    def measure(self, phase: str, load: Callable[[], LoadReport]) -> LoadReport:
        """Run `load` with only this server running; add what it measured to `phase`."""
        self.resume()
        try:
            time.sleep(0.1)  # the loop-lag watcher wakes late once after a pause: let that pass unmeasured
            before, n0, cpu0 = scrape(self.url), len(self.batches()), _cpu_seconds(self.processes)
            report = load()
            cpu1, after, batches = _cpu_seconds(self.processes), scrape(self.url), self.batches()
        finally:
            self.pause()
        p = self.phases[phase]
        p.reports.append(report)
        p.metrics += after - before
        p.batches += batches[n0:]
        p.cpu += np.subtract(cpu1, cpu0)
        return report


def _processes_of(pid: int) -> list[psutil.Process]:
    """The server's process and every process it started."""
    server = psutil.Process(pid)
    return [server, *server.children(recursive=True)]


def _check_threads(processes: list[psutil.Process], threads: int) -> None:
    """Every process of a server was started with OMP_NUM_THREADS=threads (torch's default)."""
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            got = p.environ().get("OMP_NUM_THREADS")
            if got != str(threads):
                raise RuntimeError(f"server process {p.pid} has OMP_NUM_THREADS={got}, expected {threads}")


def _read_batch_log(path: Path | None) -> tuple[int | None, list[dict[str, float]]]:
    """LitServe's worker log: its torch thread count, and every batch so far (size and compute ms)."""
    if path is None or not path.exists():
        return None, []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    threads = next((r["torch_threads"] for r in records if "torch_threads" in r), None)
    return threads, [r for r in records if "batch" in r]


@contextlib.contextmanager
def serve(name: str, threads: int, workdir: Path) -> Iterator[Server]:
    """Start one server in child processes with `threads` torch threads (checked); stop it on exit."""
    batch_log = None
    if name == "ours, unbatched":
        manager = server_process(threads=threads, max_batch_size=1)
    elif name in ("ours, batched", BUDGET_SERVER):
        manager = server_process(threads=threads, max_batch_size=MAX_BATCH, max_queue_delay_ms=DELAY_MS)
    elif name == "LitServe, batched":
        from benchmarks.litserve_app import litserve_process

        batch_log = workdir / "litserve_batches.jsonl"
        batch_log.unlink(missing_ok=True)
        manager = litserve_process(
            threads=threads, max_batch_size=MAX_BATCH, batch_timeout=DELAY_MS / 1e3, batch_log=batch_log
        )
    else:
        raise ValueError(f"unknown server {name!r}: expected one of {(*SERVERS, BUDGET_SERVER)}")
    started = time.perf_counter()
    try:
        with manager as process:
            server = Server(name, process.url, _processes_of(process.pid), time.perf_counter() - started, batch_log)
            _check_threads(server.processes, threads)
            if batch_log is not None and _read_batch_log(batch_log)[0] != threads:
                raise RuntimeError(f"{name}: worker runs {_read_batch_log(batch_log)[0]} torch threads, not {threads}")
            try:
                yield server
            finally:
                server.resume()  # a paused process cannot shut down
    finally:
        if batch_log is not None:
            batch_log.unlink(missing_ok=True)


# --- the offline ceiling ------------------------------------------------------------------------------


class OfflineCeiling:
    """Tokenise + `Engine.infer` on batches of 32 texts in this process: no HTTP, no queue, no client."""

    def __init__(self, threads: int, name: str = CEILING):
        set_thread_count(threads)
        self.name = name
        self.threads = threads
        self.codec = codec = EmbeddingCodec.from_folder()
        texts = make_texts(MAX_BATCH * 32, WORDS, seed=0)  # what the first open-loop round sends
        start = time.perf_counter()
        ids = codec.tokenize(texts)
        self.tokenize_us = (time.perf_counter() - start) / len(texts) * 1e6
        self.tokens_per_text = float(np.mean([len(row) for row in ids]))
        self.batches = [texts[i : i + MAX_BATCH] for i in range(0, len(texts), MAX_BATCH)]
        self.engine = build_engine(sentence_encoder(), codec, device="cpu").start()
        self.seconds: list[float] = []  # one per measured batch
        self.cpu = np.zeros(4)  # wall, -, this process, machine: CPU seconds while measuring

    def measure(self, duration: float) -> None:
        """Run batches back to back for about `duration` seconds (at least two batches)."""
        set_thread_count(self.threads)  # two ceilings share this process
        cpu0, start, done = _cpu_seconds([]), time.perf_counter(), 0
        while time.perf_counter() - start < duration or done < 2:
            batch = self.batches[len(self.seconds) % len(self.batches)]
            t = time.perf_counter()
            self.engine.infer(self.codec.tokenize(batch))  # the server tokenises too
            self.seconds.append(time.perf_counter() - t)
            done += 1
        self.cpu += np.subtract(_cpu_seconds([]), cpu0)

    def close(self) -> None:
        self.engine.close()
        set_thread_count(os.cpu_count() or 1)

    def row(self) -> dict[str, Any]:
        t = bench.Timing(f"tokenise + Engine.infer, batch {MAX_BATCH}", tuple(self.seconds))
        return {
            "name": self.name,
            "torch_threads": self.threads,
            "throughput_emb_s": MAX_BATCH * len(self.seconds) / sum(self.seconds),  # a mean rate, as the servers'
            "throughput_median_emb_s": MAX_BATCH / t.median,
            "batch_timing": t.row(),
            "tokenize_us_per_text": self.tokenize_us,
            "mean_tokens_per_text": self.tokens_per_text,
            "server_cpu_cores": self.cpu[2] / self.cpu[0],  # the engine runs in this process
            "other_cpu_cores": max(0.0, (self.cpu[3] - self.cpu[2]) / self.cpu[0]),
        }


# --- the run ---------------------------------------------------------------------------------------------


def _closed_load(url: str, seconds: float, seed: int) -> Callable[[], LoadReport]:
    return lambda: asyncio.run(run_closed_loop(url, CONCURRENCY, seconds, words=WORDS, seed=seed, keep_latencies=True))


def _open_load(url: str, rate: float, seconds: float, seed: int) -> Callable[[], LoadReport]:
    return lambda: asyncio.run(run_open_loop(url, rate, seconds, words=WORDS, seed=seed, keep_latencies=True))


def _rotations(names: tuple[str, ...], rounds: int) -> Iterator[tuple[int, list[str]]]:
    for r in range(rounds):
        yield r, [names[(r + i) % len(names)] for i in range(len(names))]


def _row(server: Server, threads: int) -> dict[str, Any]:
    closed, opened = server.phases["closed"], server.phases["open"]
    c, saturated = closed.report(), closed.stats()
    o, light = (opened.report(), opened.stats()) if opened.reports else (None, {"mean_batch_size": None})
    return {
        "name": server.name,
        "torch_threads": threads,
        "startup_s": server.startup_s,
        "throughput_emb_s": c.embeddings_per_s,
        "throughput_per_round_emb_s": [r.embeddings_per_s for r in closed.reports],
        "closed_p50_ms": c.p50_ms,
        "closed_p99_ms": c.p99_ms,
        "open_rate_rps": o and o.rate,
        "p50_ms": o and o.p50_ms,
        "p99_ms": o and o.p99_ms,
        "mean_batch_size": saturated["mean_batch_size"],
        "mean_batch_size_open": light["mean_batch_size"],
        "server_cpu_cores": saturated["server_cpu_cores"],
        "client_cpu_cores": saturated["client_cpu_cores"],
        "other_cpu_cores": saturated["other_cpu_cores"],
        "saturated": saturated,
        "open": light,
        "closed_report": c.to_dict(),
        "open_report": o and o.to_dict(),
    }


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["name"]: r["throughput_emb_s"] for r in rows}
    out = []
    for name, num, den, at_least in TARGETS:
        if by_name.get(num) and by_name.get(den):
            value = by_name[num] / by_name[den]
            out.append({"target": name, "ratio": value, "at_least": at_least, "met": value >= at_least})
    for name, num, den in REPORTED:
        if by_name.get(num) and by_name.get(den):
            out.append({"target": name, "ratio": by_name[num] / by_name[den], "at_least": None, "met": None})
    return out


def run(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    threads = os.cpu_count() or 1
    budget = max(1, threads - 1)  # torch threads when one core is left to the load generator
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        ceilings = {CEILING: OfflineCeiling(threads), BUDGET_CEILING: OfflineCeiling(budget, BUDGET_CEILING)}
        for ceiling in ceilings.values():
            stack.callback(ceiling.close)
            ceiling.measure(plan.warmup_s)
            ceiling.seconds.clear()
            ceiling.cpu[:] = 0
        servers: dict[str, Server] = {}
        for name in (*SERVERS, BUDGET_SERVER):  # started one by one, each paused once warm: cannot slow the others
            servers[name] = server = stack.enter_context(serve(name, budget if name == BUDGET_SERVER else threads, out))
            server.measure("warmup", _closed_load(server.url, plan.warmup_s, seed=99))
        for r, order in _rotations((*SERVERS, CEILING, BUDGET_SERVER, BUDGET_CEILING), plan.rounds):
            for name in order:
                if name in ceilings:
                    ceilings[name].measure(plan.closed_s)
                else:
                    servers[name].measure("closed", _closed_load(servers[name].url, plan.closed_s, seed=r))
        rate = OPEN_FRACTION * servers[SERVERS[0]].phases["closed"].report().goodput_rps
        for r, order in _rotations(SERVERS, plan.rounds):
            for name in order:
                servers[name].measure("open", _open_load(servers[name].url, rate, plan.open_s, seed=r))
        rows = [_row(servers[name], threads) for name in SERVERS]
        rows.append(ceilings[CEILING].row())
        rows.append(_row(servers[BUDGET_SERVER], budget))
        rows.append(ceilings[BUDGET_CEILING].row())
    for row in rows:
        cpu = f"cpu cores: server {row['server_cpu_cores']:.2f}, other processes {row['other_cpu_cores']:.2f}"
        if row["name"] in ceilings:
            print(
                f"{row['name']:25s}: {row['throughput_emb_s']:7.1f} embeddings/s, {row['torch_threads']} threads "
                f"(tokenise + Engine.infer, batch {MAX_BATCH}, no HTTP); {cpu}"
            )
            continue
        light = f", p99 {_fmt(row['p99_ms'])} ms at {rate:.1f} req/s" if row["p99_ms"] is not None else ""
        print(
            f"{row['name']:25s}: {row['throughput_emb_s']:7.1f} embeddings/s, {row['torch_threads']} threads "
            f"(mean batch {_fmt(row['mean_batch_size'])}){light}; {cpu}, "
            f"load generator {row['client_cpu_cores']:.2f}"
        )
    targets = ratios(rows)
    for t in targets:
        verdict = "" if t["met"] is None else ("met" if t["met"] else "MISSED")
        want = "no target" if t["at_least"] is None else f"want >= {t['at_least']:g}x"
        print(f"{t['target']:44s} {t['ratio']:5.2f}x ({want}) {verdict}")
    diagnosis = _diagnosis(rows)
    print(diagnosis)
    bench.save_results(
        out / "serving.json",
        rows,
        benchmark="serving",
        model=MINILM_NAME,
        quick=quick,
        plan=dataclasses.asdict(plan),
        threads=threads,
        budget_threads=budget,
        concurrency=CONCURRENCY,
        words_per_text=WORDS,
        max_batch_size=MAX_BATCH,
        max_queue_delay_ms=DELAY_MS,
        open_rate_rps=rate,
        targets=targets,
        diagnosis=diagnosis,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )
    plot(rows, rate, out / "serving.png", quick)
    return rows


def _diagnosis(rows: list[dict[str, Any]]) -> str:
    """Where the batched server's time goes next to the offline ceiling: the numbers a miss is read from."""
    by_name = {r["name"]: r for r in rows}
    batched, ceiling = by_name[SERVERS[1]], by_name[CEILING]
    s = batched["saturated"]
    busy = (s["batches"] or 0) * (s["compute_mean_ms"] or 0) / 1e3 / batched["closed_report"]["elapsed_s"]
    return (
        f"batched server at saturation: mean batch {_fmt(s['mean_batch_size'])}, "
        f"{_fmt(s['compute_mean_ms'])} ms per batch (offline: {ceiling['batch_timing']['median_ms']:.1f} ms), "
        f"model busy {busy:.0%} of the time, queue wait {_fmt(s['queue_mean_ms'])} ms, "
        f"event-loop lag {_fmt(s['loop_lag_mean_ms'])} ms; CPU cores: server {batched['server_cpu_cores']:.2f}, "
        f"load generator {batched['client_cpu_cores']:.2f}, other processes {batched['other_cpu_cores']:.2f} "
        f"(offline engine {ceiling['server_cpu_cores']:.2f}); with one core left to the load generator "
        f"({by_name[BUDGET_SERVER]['torch_threads']} torch thread(s) each): server "
        f"{by_name[BUDGET_SERVER]['throughput_emb_s']:.1f}, ceiling {by_name[BUDGET_CEILING]['throughput_emb_s']:.1f} "
        f"embeddings/s"
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def plot(rows: list[dict[str, Any]], rate: float, path: Path, quick: bool) -> None:
    colours = {
        SERVERS[0]: "tab:gray",
        SERVERS[1]: "tab:blue",
        SERVERS[2]: "tab:orange",
        CEILING: "tab:green",
        BUDGET_SERVER: "lightsteelblue",
        BUDGET_CEILING: "darkseagreen",
    }
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11.5, 3.6), gridspec_kw={"width_ratios": [1.2, 1]}, layout="constrained"
    )
    names = [f"{r['name']} ({r['torch_threads']} thr)" for r in rows]
    values = [r["throughput_emb_s"] for r in rows]
    left.barh(names, values, color=[colours[r["name"]] for r in rows])
    for i, r in enumerate(rows):
        note = f" {r['throughput_emb_s']:.0f}"
        if r.get("mean_batch_size") is not None:
            note += f"  (mean batch {r['mean_batch_size']:.1f})"
        left.text(r["throughput_emb_s"], i, note, va="center", fontsize=8)
    # 0.8 x each ceiling, drawn across the rows compared with it
    for ceiling, span in ((CEILING, (-0.5, 3.5)), (BUDGET_CEILING, (3.5, len(rows) - 0.5))):
        value = next((r["throughput_emb_s"] for r in rows if r["name"] == ceiling), None)
        if value:
            left.plot([0.8 * value] * 2, span, color="tab:green", ls=":", lw=1)
            left.text(0.8 * value, span[1], " 0.8 x ceiling", color="tab:green", fontsize=7, va="bottom")
    left.invert_yaxis()
    left.set_xlim(0, max(values) * 1.45)
    left.set_xlabel(f"embeddings/s at saturation ({CONCURRENCY} closed-loop callers)")
    served = [r for r in rows if r.get("p99_ms") is not None]
    right.barh(
        [f"{r['name']} ({r['torch_threads']} thr)" for r in served],
        [r["p99_ms"] for r in served],
        color=[colours[r["name"]] for r in served],
    )
    for i, r in enumerate(served):
        right.text(r["p99_ms"], i, f" {r['p99_ms']:.0f} ms", va="center", fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, max([r["p99_ms"] for r in served], default=1.0) * 1.3)
    right.set_xlabel(f"p99 latency (ms) at {rate:.1f} requests/s, open loop (Poisson)")
    title = f"{MINILM_NAME}, one text per request; the last pair leaves one core to the load generator"
    bench.save_figure(fig, path, title, quick)
