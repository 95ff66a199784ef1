"""Our decoder (module 07) against Hugging Face `transformers` on the same checkpoint, same machine, one run.

The checkpoint: a Llama with SmolLM-135M's shape (30 layers, hidden 576, 9 heads / 3 key-value heads,
SwiGLU 1536, vocabulary 49,152, tied embeddings; 135M parameters, 540 MB in float32), random weights,
seeded, written with `save_pretrained` (nothing is downloaded; speed does not depend on what the weights
are). `--quick` uses 2 layers of the same width, a vocabulary of 8,192, and skips the compiled row.

Rows: greedy decoding of 128 new tokens after a 16-token prompt, at batch 1 and batch 8, in tokens/s
(the median of 5 runs, the engines taking turns so that a noisy moment hits all of them):
`transformers` `generate` (eager, its default dynamic cache) against ours eager (static KV cache), ours
with the decode step compiled (`torch.compile`, static shapes; compile time reported apart and excluded),
and ours with int8 weights (the module 02 kernels). Prefill: one forward over a 512-token prompt, in
tokens/s. Peak memory: the most resident memory above the loaded (and once run) model during a batch-8 generation,
sampled every 2 ms on a thread, each engine in a fresh process (in one process, the second engine would
reuse memory the first left in the allocator and seem to need none). Targets (printed, never asserted):
ours >= 2x transformers at batch 1 and >= 1.5x at batch 8 (the best of our rows, each named).
"""

from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import psutil
import torch
import transformers

from common import bench
from common.llm import load_pretrained
from common.llm.anatomy import CHECKPOINT_SHAPES
from common.llm.generate import compiled_step, generate
from common.llm.quantize import quantize

SMOLLM_135M = {k: v for k, v in CHECKPOINT_SHAPES["SmolLM-135M"].items() if k != "architectures"}
PROMPT, NEW, PREFILL = 16, 128, 512
TARGETS = {1: 2.0, 8: 1.5}


def _checkpoint(folder: Path, quick: bool) -> Path:
    torch.manual_seed(0)
    shape = SMOLLM_135M | ({"num_hidden_layers": 2, "vocab_size": 8192} if quick else {})
    config = transformers.LlamaConfig(**shape, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _peak_extra_rss(fn: Callable[[], Any]) -> int:
    """The most resident memory above the starting point while `fn()` runs, sampled every 2 ms."""
    process, start, peak, done = psutil.Process(), psutil.Process().memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss - start)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return peak[0]


def _generation_memory(engine: str, folder: str, new: int) -> int:
    """Run in a fresh process: load `engine`'s model, then the extra resident memory of one batch-8
    generation. A fresh process, so neither engine reuses memory the other's run left in the allocator."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    ids = torch.randint(0, 1000, (8, PROMPT), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        if engine == "transformers generate":
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

            def run(n: int) -> Any:
                return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        else:
            ours = load_pretrained(folder)

            def run(n: int) -> Any:
                return generate(ours, ids.tolist(), max_new_tokens=n)

        run(1)  # page the weights in (a load may map them lazily): the measure is then what generating adds
        return _peak_extra_rss(lambda: run(new))


def _interleaved_medians(engines: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """The median seconds of each engine, timed in turns (one run of each, `repeat` times over) after a
    warm-up run of each: a noisy moment on a shared machine then lands on every engine, not on one."""
    for fn in engines.values():
        fn()  # warm: first-call allocations, thread pools, compilation, the page cache
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeat):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    load_before = os.getloadavg()
    new = 16 if quick else NEW
    repeat = 1 if quick else 5
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpai-llm-bench-") as tmp, torch.inference_mode():
        folder = _checkpoint(Path(tmp), quick)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ours = load_pretrained(folder)
        int8 = quantize(copy.deepcopy(ours), "int8")
        step = compiled_step(ours)
        for batch in (1, 8):
            ids = torch.randint(0, ours.config.vocab_size, (batch, PROMPT), generator=torch.Generator().manual_seed(1))
            prompts = ids.tolist()
            engines: dict[str, Callable[[], Any]] = {
                "transformers generate": partial(
                    theirs.generate, ids, max_new_tokens=new, min_new_tokens=new, do_sample=False
                ),
                "ours, eager": partial(generate, ours, prompts, max_new_tokens=new),
                "ours, compiled decode": partial(generate, ours, prompts, max_new_tokens=new, compile=True),
                "ours, int8 weights": partial(generate, int8, prompts, max_new_tokens=new),
            }
            if quick:  # compiling twice would be most of a smoke run; the unit tests compile
                del engines["ours, compiled decode"]
            for name, seconds in _interleaved_medians(engines, repeat).items():
                rows.append({"part": "decode", "name": name, "batch": batch, "tok_s": batch * new / seconds})
                print(f"decode batch {batch} {name:28s} {batch * new / seconds:8.1f} tok/s")
        long = torch.randint(0, ours.config.vocab_size, (1, PREFILL), generator=torch.Generator().manual_seed(2))
        prefill = {"transformers": lambda: theirs(long).logits, "ours": lambda: ours(long)}
        for name, seconds in _interleaved_medians(prefill, repeat).items():
            rows.append({"part": "prefill", "name": name, "batch": 1, "tok_s": PREFILL / seconds})
            print(f"prefill {PREFILL} tokens {name:20s} {PREFILL / seconds:8.0f} tok/s")
        for name in ("transformers generate", "ours, eager"):  # a fresh process each, one at a time
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                extra = pool.submit(_generation_memory, name, str(folder), new).result()
            rows.append({"part": "memory", "name": name, "batch": 8, "peak_extra_MiB": extra / 2**20})
            print(f"memory, batch 8 {name:28s} {extra / 2**20:8.1f} MiB above the loaded model")
        compile_seconds = step.compile_seconds
    goals = []
    for batch, want in TARGETS.items():
        decode = [r for r in rows if r["part"] == "decode" and r["batch"] == batch]
        base = next(r["tok_s"] for r in decode if r["name"] == "transformers generate")
        best = max((r for r in decode if r["name"] != "transformers generate"), key=lambda r: r["tok_s"])
        goals.append(
            {
                "target": f"ours ({best['name']}) / transformers, batch {batch}",
                "value": best["tok_s"] / base,
                "at_least": want,
            }
        )
        for r in decode:
            r["vs_transformers"] = r["tok_s"] / base
    for g in goals:
        g["met"] = g["value"] >= g["at_least"]
    bench.print_targets(goals, width=60)
    bench.save_results(
        out / "llm.json", rows, benchmark="llm", quick=quick, targets=goals, compile_seconds=compile_seconds,
        transformers=transformers.__version__, load_average_before=load_before, load_average_after=os.getloadavg(),
    )  # fmt: skip
    _plot(rows, goals, out / "llm.png", quick)
    return rows


def _plot(rows: list[dict[str, Any]], goals: list[dict[str, Any]], path: Path, quick: bool) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for ax, batch in zip(axes[:2], (1, 8), strict=True):
        decode = [r for r in rows if r["part"] == "decode" and r["batch"] == batch]
        bench.labelled_barh(
            ax, [r["name"] for r in decode], [r["tok_s"] for r in decode],
            fmt=".0f", xlabel="tokens/s (greedy, median)", title=f"decode, batch {batch}",
        )  # fmt: skip
    prefill = [r for r in rows if r["part"] == "prefill"]
    axes[2].bar([r["name"] for r in prefill], [r["tok_s"] for r in prefill], color="tab:green")
    axes[2].set_ylabel("tokens/s")
    axes[2].set_title(f"prefill, {PREFILL}-token prompt")
    summary = "; ".join(f"{g['target']}: {g['value']:.2f}x" for g in goals)
    bench.save_figure(fig, path, "our decoder vs transformers, same checkpoint", quick, summary)
