"""Module 07's quantisation table: what int8 and int4 weights cost in perplexity and buy in decode speed.

Two tables, each a row per variant (float32, int8 per output row, int4 in groups of 128 and of 32):
- the shipped default model on its shipped held-out ids (`common.llm.default_heldout`, all 168,720 of
  them): MB read per decode token, held-out perplexity, batch-1 decode ms per token and tokens/s;
- a model with SmolLM-135M's shape and random weights (speed does not depend on what the weights are; its
  576 inputs take int4 groups of 32, not 128), where the bytes read decide more of a step's time: the same
  columns without perplexity, and the time reading those bytes at this machine's copy bandwidth would take.

`--quick`: the first 4,096 held-out ids and two layers of the SmolLM shape (smoke, not a measurement).
No targets: what int4 buys depends on the CPU (modules/07_llm/05_quantisation.ipynb says how).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from common import bench
from common.llm import CHECKPOINT_SHAPES, Decoder, DecoderConfig, default_heldout, load_default
from common.llm.profile import quantisation_table
from common.llm.quantize import Variant

SHAPE = "SmolLM-135M"
SPEED_VARIANTS: tuple[Variant, ...] = ("fp32", "int8", "int4 g32")  # 576 inputs: int4 groups of 32


def run(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    model, _ = load_default()
    heldout = default_heldout()[: 4096 if quick else None]
    print(f"default model, {heldout.numel():,} held-out tokens")
    ours = [{"model": "default", **row} for row in quantisation_table(model, heldout)]
    _print(ours)
    torch.manual_seed(0)
    shape = CHECKPOINT_SHAPES[SHAPE] | ({"num_hidden_layers": 2} if quick else {})
    big = Decoder(DecoderConfig.from_hf(shape)).eval()
    bandwidth = bench.machine_ceilings().bandwidth_gbs
    smol = [{"model": SHAPE, **row} for row in quantisation_table(big, names=SPEED_VARIANTS)]
    for row in smol:
        row["ms at copy bandwidth"] = row["MB read per token"] / 1e3 / bandwidth * 1e3
    print(f"\n{SHAPE} shape{' (2 layers)' if quick else ''}, random weights (speed only)")
    _print(smol)
    rows = ours + smol
    bench.save_results(
        out / "quantisation.json", rows, benchmark="quantisation", quick=quick,
        heldout_tokens=heldout.numel(), copy_bandwidth_gbs=bandwidth,
    )  # fmt: skip
    _plot(ours, smol, bandwidth, out / "quantisation.png", quick)
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    columns = [k for k in rows[0] if k != "model"]
    print(" | ".join(f"{k:>20}" for k in columns))
    for row in rows:
        print(" | ".join(f"{row[k]:>20.2f}" if isinstance(row[k], float) else f"{row[k]:>20}" for k in columns))


def _plot(ours: list[dict[str, Any]], smol: list[dict[str, Any]], bandwidth: float, path: Path, quick: bool) -> None:
    fig, (quality, speed) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    base = ours[0]["perplexity"]  # fp32, the first row
    bench.labelled_barh(
        quality, [r["variant"] for r in ours], [100 * (r["perplexity"] / base - 1) for r in ours],
        fmt="+.2f", xlabel="held-out perplexity above fp32's (%)", title=f"default model: quality (fp32: {base:.2f})",
    )  # fmt: skip
    mb = [r["MB read per token"] for r in smol]
    speed.plot(mb, [r["ms per token"] for r in smol], "o")
    for r in smol:
        speed.annotate(r["variant"], (r["MB read per token"], r["ms per token"]), textcoords="offset points",
                       xytext=(5, 4))  # fmt: skip
    line = [0.0, max(mb) * 1.05]
    speed.plot(line, [x / 1e3 / bandwidth * 1e3 for x in line], "--", color="grey", label=f"at {bandwidth:.0f} GB/s")
    speed.set(xlabel="MB of weights read per token", ylabel="ms per decode step (batch 1)", xlim=(0, None),
              ylim=(0, None), title=f"{SHAPE} shape: time against bytes read")  # fmt: skip
    speed.legend()
    bench.save_figure(fig, path, "weight-only quantisation: perplexity and decode speed", quick)
