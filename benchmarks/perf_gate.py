"""CI performance gate: dynamic batching must keep paying for itself.

    python -m benchmarks.perf_gate                  # exit 1 if batched/unbatched < 2x
    python -m benchmarks.perf_gate --min-ratio 2.5  # a stricter gate

Starts our server twice (`max_batch_size=1`, and batched with 32 rows / 5 ms),
both with all cores as torch threads, and drives each with the same closed loop
of single-text requests. The runs alternate (unbatched, batched, unbatched, ...)
so drift on a shared machine hits both alike; the gate is the median over rounds
of batched/unbatched embeddings/s, a ratio, never an absolute time. The result
goes to benchmarks/results/perf_gate.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.serving import CONCURRENCY, DELAY_MS, MAX_BATCH, WORDS
from common import bench
from common.engine.embedding import MINILM_NAME
from common.serving.loadgen import run_closed_loop
from common.serving.server import server_process

DEFAULT_OUT = Path(__file__).parent / "results" / "perf_gate.json"


def measure(duration: float, rounds: int, concurrency: int, threads: int) -> list[dict[str, Any]]:
    """Per round: embeddings/s of the unbatched and the batched server, and their ratio."""
    results = []
    with (
        server_process(threads=threads, max_batch_size=1) as unbatched,
        server_process(threads=threads, max_batch_size=MAX_BATCH, max_queue_delay_ms=DELAY_MS) as batched,
    ):
        for server in (unbatched, batched):  # warm-up: first requests pay for lazy allocations
            asyncio.run(run_closed_loop(server.url, concurrency, 1.0, words=WORDS, seed=100))
        for i in range(rounds):
            order = [("unbatched", unbatched.url), ("batched", batched.url)]
            row: dict[str, Any] = {"round": i}
            for name, url in order if i % 2 == 0 else order[::-1]:
                report = asyncio.run(run_closed_loop(url, concurrency, duration, words=WORDS, seed=i))
                failed = report.requests - report.counts.get("200", 0)
                row[f"{name}_emb_s"] = report.embeddings_per_s
                row[f"{name}_failed"] = failed
            row["ratio"] = row["batched_emb_s"] / row["unbatched_emb_s"] if row["unbatched_emb_s"] else 0.0
            print(
                f"round {i}: unbatched {row['unbatched_emb_s']:.1f}, batched {row['batched_emb_s']:.1f} "
                f"embeddings/s -> {row['ratio']:.2f}x"
            )
            results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf_gate", description=__doc__.splitlines()[0])
    p.add_argument("--min-ratio", type=float, default=2.0, help="fail below this batched/unbatched ratio (default 2)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of load per server per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the gate uses their median (default 3)")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY, help=f"closed-loop callers (default {CONCURRENCY})")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per server (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.min_ratio <= 0 or args.duration <= 0 or args.rounds < 1 or args.concurrency < 1:
        p.error("--min-ratio and --duration must be > 0, --rounds and --concurrency >= 1")

    start = time.perf_counter()
    rows = measure(args.duration, args.rounds, args.concurrency, args.threads)
    ratio = statistics.median(r["ratio"] for r in rows)
    failed = sum(r["unbatched_failed"] + r["batched_failed"] for r in rows)
    passed = ratio >= args.min_ratio and failed == 0
    bench.save_results(
        args.out,
        rows,
        benchmark="perf_gate",
        model=MINILM_NAME,
        ratio=ratio,
        min_ratio=args.min_ratio,
        passed=passed,
        failed_requests=failed,
        duration_s=args.duration,
        rounds=args.rounds,
        concurrency=args.concurrency,
        threads=args.threads,
        max_batch_size=MAX_BATCH,
        max_queue_delay_ms=DELAY_MS,
        wall_s=time.perf_counter() - start,
    )
    print(f"batched/unbatched throughput: {ratio:.2f}x (gate: >= {args.min_ratio:g}x); wrote {args.out}")
    if failed:
        print(f"perf gate FAILED: {failed} request(s) did not get a 200 answer", file=sys.stderr)
    if ratio < args.min_ratio:
        print(
            f"perf gate FAILED: dynamic batching gives {ratio:.2f}x the unbatched throughput, "
            f"below the required {args.min_ratio:g}x ({MINILM_NAME}, {args.concurrency} callers, "
            f"{args.threads} threads)",
            file=sys.stderr,
        )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
