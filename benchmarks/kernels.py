"""What the kernels achieve: each op's Numba, PyTorch and NumPy times, as fractions of this machine's ceilings.

Memory-bound ops (softmax, layernorm, GELU, bias+GELU) run on 4096 x 4096 float32
(64 MiB, far beyond the caches) and are judged by achieved bandwidth: the bytes
the op cannot avoid (read each input once, write the output once) over its time,
as a fraction of the copy bandwidth `common.bench.machine_ceilings()` measures.
"Unfused" is the op written one NumPy call per step (`common.kernels.demos.unfused`);
PyTorch's bias+GELU is itself add-then-GELU, two kernels. Every call returns a fresh
64 MiB array, and mapping fresh memory costs about as much as the kernel (torch's
allocator asks for no huge pages, NumPy's does), so the fused kernels are also timed
writing into a warm buffer (`out=`): that row is the kernel's own bandwidth, and the
bandwidth target is read from it; the end-to-end rows are what a caller sees.
Matmul is judged by GFLOP/s
against the measured fp32 matmul rate. Attention: naive vs flash (Numba), time and
extra memory (tracemalloc peak beyond the output) vs sequence length.

Every Numba/torch pair is timed interleaved (`common.bench.compare`), and the
targets are ratios from this run: fused memory-bound ops >= 1.0x torch and >= 60%
of copy bandwidth; flash attention's extra memory flat in N while naive grows as N^2.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numba
import numpy as np
import torch

from common import bench
from common.kernels import OPS
from common.kernels.analysis import roofline
from common.kernels.demos import unfused

ROWS, COLS = 4096, 4096
MATMUL_N = 1024
HEADS, HEAD_DIM = 4, 64
BANDWIDTH_TARGET = 0.6
TORCH_TARGET = 1.0


def _inputs(op: str, rows: int, cols: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    vec = lambda: rng.standard_normal(cols, dtype=np.float32)  # noqa: E731
    return {"softmax": (x,), "gelu": (x,), "bias_gelu": (x, vec()), "layernorm": (x, vec(), vec())}[op]


def memory_bound(quick: bool, ceilings: bench.Ceilings) -> list[dict[str, Any]]:
    rows, cols = (512, 1024) if quick else (ROWS, COLS)
    repeat = 3 if quick else 15
    rng = np.random.default_rng(0)
    out = []
    for name in roofline.MEMORY_BOUND:
        args = _inputs(name, rows, cols, rng)
        targs = tuple(torch.from_numpy(a) for a in args)
        fused, via_torch = OPS[name].implementation("numba"), OPS[name].implementation("torch")
        fused(*args)  # compile (or load from the cache) before timing
        run_fused = partial(fused, *args)
        vs_torch = bench.compare(partial(via_torch, *targs), run_fused, names=("torch", "numba"), repeat=repeat)
        vs_numpy = bench.compare(
            partial(unfused.UNFUSED[name], *args), run_fused, names=("numpy, unfused", "numba"), repeat=repeat
        )
        warm = np.empty_like(args[0])
        into = bench.measure(partial(fused, *args, out=warm), repeat=repeat)
        timings = {
            "numba": vs_torch.candidate,
            "numba, into a warm buffer": into,
            "torch": vs_torch.baseline,
            "numpy, unfused": vs_numpy.baseline,
        }
        for impl, t in timings.items():
            gbs = roofline.achieved_gbs(name, t.median, *args)
            out.append(
                {
                    "op": name,
                    "implementation": impl,
                    "shape": [rows, cols],
                    "median_ms": t.median * 1e3,
                    "gb_s": gbs,
                    "fraction_of_copy_bandwidth": gbs / ceilings.bandwidth_gbs,
                }
            )
        out[-len(timings)]["speedup_vs_torch"] = vs_torch.speedup
        out[-len(timings)]["speedup_vs_numpy_unfused"] = vs_numpy.speedup
        print(
            f"{name:10s} numba {timings['numba'].median * 1e3:7.2f} ms "
            f"({out[-len(timings)]['fraction_of_copy_bandwidth']:.0%} of copy bandwidth; into a warm buffer "
            f"{out[-len(timings) + 1]['fraction_of_copy_bandwidth']:.0%}), "
            f"{vs_torch.speedup:.2f}x torch, {vs_numpy.speedup:.2f}x unfused NumPy"
        )
    return out


def matmul(quick: bool, ceilings: bench.Ceilings) -> list[dict[str, Any]]:
    n = 256 if quick else MATMUL_N
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fused = OPS["matmul"].implementation("numba")
    fused(a, b)
    repeat = 3 if quick else 10
    timings = {
        "numba": bench.measure(lambda: fused(a, b), repeat=repeat),
        "torch": bench.measure(lambda: ta @ tb, repeat=repeat),
        "numpy": bench.measure(lambda: a @ b, repeat=repeat),
    }
    out = []
    for impl, t in timings.items():
        gflops = roofline.achieved_gflops("matmul", t.median, a, b)
        out.append(
            {
                "op": "matmul",
                "implementation": impl,
                "shape": [n, n, n],
                "median_ms": t.median * 1e3,
                "gflop_s": gflops,
                "fraction_of_matmul_peak": gflops / ceilings.matmul_gflops,
            }
        )
    print("matmul     " + ", ".join(f"{r['implementation']} {r['gflop_s']:.1f} GFLOP/s" for r in out))
    return out


def attention(quick: bool) -> list[dict[str, Any]]:
    lengths = (64, 128, 256) if quick else (256, 512, 1024, 2048, 4096)
    rng = np.random.default_rng(2)
    op = OPS["attention"]
    out = []
    for n in lengths:
        q, k, v = (rng.standard_normal((HEADS, n, HEAD_DIM), dtype=np.float32) for _ in range(3))
        row: dict[str, Any] = {"op": "attention", "seq": n, "heads": HEADS, "head_dim": HEAD_DIM}
        for algorithm in ("naive", "flash"):
            call = partial(op, q, k, v, backend="numba", algorithm=algorithm)
            call()  # compile, warm
            _, memory = bench.measure_memory(call)
            t = bench.measure(call, repeat=3, number=1)
            row[f"{algorithm}_ms"] = t.median * 1e3
            # the output is needed either way: extra memory is what the algorithm allocates besides it
            row[f"{algorithm}_extra_mib"] = (memory.traced_peak_bytes - q.nbytes // HEAD_DIM * v.shape[-1]) / 2**20
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        sdpa = partial(torch.nn.functional.scaled_dot_product_attention, tq, tk, tv)
        t = bench.measure(sdpa, repeat=3, number=1)
        row["torch_sdpa_ms"] = t.median * 1e3
        out.append(row)
        print(
            f"attention N={n:5d}: naive {row['naive_ms']:8.1f} ms {row['naive_extra_mib']:8.1f} MiB, "
            f"flash {row['flash_ms']:8.1f} ms {row['flash_extra_mib']:6.2f} MiB, torch SDPA {row['torch_sdpa_ms']:.1f} ms"
        )
    return out


def targets(mem: list[dict[str, Any]], att: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    kernel = {r["op"]: r for r in mem if r["implementation"] == "numba, into a warm buffer"}
    for r in (r for r in mem if r["implementation"] == "numba"):
        out.append(
            {"target": f"{r['op']}: numba / torch speed", "value": r["speedup_vs_torch"], "at_least": TORCH_TARGET}
        )
        out.append(
            {
                "target": f"{r['op']}: kernel's fraction of copy bandwidth",
                "value": kernel[r["op"]]["fraction_of_copy_bandwidth"],
                "at_least": BANDWIDTH_TARGET,
            }
        )
    first, last = att[0], att[-1]
    n_ratio = last["seq"] / first["seq"]
    out.append(
        {
            "target": f"flash extra memory at N={last['seq']} / at N={first['seq']} (flat: about 1)",
            "value": last["flash_extra_mib"] / max(first["flash_extra_mib"], 1e-9),
            "at_most": 1.5,
        }
    )
    out.append(
        {
            "target": "naive extra memory growth / sequence growth squared (quadratic: about 1)",
            "value": last["naive_extra_mib"] / max(first["naive_extra_mib"], 1e-9) / n_ratio**2,
            "at_least": 0.25,
        }
    )
    for t in out:
        t["met"] = t["value"] >= t["at_least"] if "at_least" in t else t["value"] <= t["at_most"]
    return out


def plot(mem: list[dict[str, Any]], att: list[dict[str, Any]], path: Path, quick: bool) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    impls = ["numba, into a warm buffer", "numba", "torch", "numpy, unfused"]
    colours = {
        "numba, into a warm buffer": "lightsteelblue",
        "numba": "tab:blue",
        "torch": "tab:orange",
        "numpy, unfused": "tab:gray",
    }
    ops = list(roofline.MEMORY_BOUND)
    width = 0.2
    for i, impl in enumerate(impls):
        xs = [ops.index(r["op"]) + i * width for r in mem if r["implementation"] == impl]
        ys = [r["fraction_of_copy_bandwidth"] for r in mem if r["implementation"] == impl]
        left.bar(xs, ys, width, label=impl, color=colours[impl])
    left.axhline(1.0, color="k", lw=0.8)
    left.axhline(BANDWIDTH_TARGET, color="tab:green", ls=":", lw=1)
    left.set_xticks([i + 1.5 * width for i in range(len(ops))], ops)
    left.set_ylabel("achieved / copy bandwidth")
    left.set_title(f"memory-bound ops, {mem[0]['shape'][0]} x {mem[0]['shape'][1]} float32")
    left.legend(fontsize=8)
    n = [r["seq"] for r in att]
    right.loglog(n, [r["naive_extra_mib"] for r in att], "o-", label="naive: extra memory (MiB)")
    right.loglog(n, [max(r["flash_extra_mib"], 1e-3) for r in att], "s-", label="flash: extra memory (MiB)")
    right.set_xlabel("sequence length N")
    right.set_ylabel("peak extra memory (MiB, tracemalloc)")
    right.set_title(f"attention, {HEADS} heads x {HEAD_DIM}, Numba")
    right.legend(fontsize=8)
    bench.save_figure(fig, path, "kernels", quick)


def run(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    ceilings = bench.machine_ceilings("cpu")
    mem = memory_bound(quick, ceilings)
    mm = matmul(quick, ceilings)
    att = attention(quick)
    goals = targets(mem, att)
    bench.print_targets(goals, width=70)
    rows = mem + mm + att
    bench.save_results(
        out / "kernels.json",
        rows,
        benchmark="kernels",
        quick=quick,
        ceilings=bench.ceilings_row(ceilings),
        targets=goals,
        numba_threads=numba.get_num_threads(),
        torch_threads=torch.get_num_threads(),
    )
    plot(mem, att, out / "kernels.png", quick)
    return rows
