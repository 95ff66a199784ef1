"""What the engine costs: `Engine.infer` against calling the torch module directly.

The peer is plain PyTorch, the code people write instead of an engine: build
the tensor, call the module under `inference_mode`, argmax. The engine adds
request validation, a codec and a runtime boundary; this measures that price
per batch size, for the eager and the compiled runtime.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from common import bench
from common.engine import ClassificationCodec, build_engine, zoo

MODEL = zoo.mlp_classifier(features=256, hidden=1024, classes=10, depth=3)
CODEC: ClassificationCodec[list[float]] = ClassificationCodec(256, tuple(f"class-{i}" for i in range(10)))


def _plain_torch(module: torch.nn.Module, batch: list[list[float]]):
    def call():
        with torch.inference_mode():
            probs = torch.softmax(module(torch.tensor(batch, dtype=torch.float32)), dim=1)
            return probs.max(dim=1)

    return call


def run(out: Path, quick: bool = False) -> list[dict]:
    sizes = (1, 32) if quick else (1, 8, 64, 256)
    runtimes = ("torch-eager",) if quick else ("torch-eager", "torch-compile")
    repeat = 5 if quick else 30
    module = MODEL.build()
    results = []
    for runtime in runtimes:
        with build_engine(MODEL, CODEC, runtime=runtime) as engine:
            for n in sizes:
                batch = np.random.default_rng(n).standard_normal((n, 256)).tolist()
                c = bench.compare(
                    _plain_torch(module, batch),
                    functools.partial(engine.infer, batch),
                    names=("plain torch", f"engine ({runtime})"),
                    repeat=repeat,
                    # 10 calls a sample: each model's weights (~10 MB) are evicted from cache by the other's
                    # between samples; amortising that over 10 calls keeps it from dominating at batch 1
                    number=2 if quick else 10,
                )
                row = {"runtime": runtime, "batch": n, **c.row(), "engine_cost": 1 / c.speedup}
                results.append(row)
                print(
                    f"{runtime:14s} batch {n:4d}: plain {row['baseline_ms']:.3f} ms, engine {row['candidate_ms']:.3f} ms, engine/plain {row['engine_cost']:.2f}x"
                )
    bench.save_results(out / "engine.json", results, benchmark="engine", model=MODEL.name, quick=quick)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for runtime in runtimes:
        rows = [r for r in results if r["runtime"] == runtime]
        ax.plot([r["batch"] for r in rows], [r["engine_cost"] for r in rows], "o-", label=runtime)
    ax.axhline(1.0, color="grey", ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("engine time / plain torch time")
    ax.set_title(f"engine overhead, {MODEL.name}")
    ax.legend()
    fig.savefig(out / "engine.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return results
