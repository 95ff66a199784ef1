"""Pictures of the paged cache's bookkeeping, for the notebooks (matplotlib is imported when drawing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.llm.paged import BlockManager, PagedSequence


def plot_block_tables(manager: BlockManager, seqs: Mapping[str, PagedSequence], ax: Any = None) -> Any:
    """Physical blocks as a row of cells, coloured by the sequence that holds each (hatched when several
    do); below, each sequence's block table: the physical block of each of its blocks, and how full the
    last one is."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(min(14, 1 + 0.55 * manager.num_blocks), 1.6 + 0.5 * len(seqs)))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    owners: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs.values()):
        for block in seq.table:
            owners.setdefault(block, []).append(i)
    top = len(seqs) + 1
    for block in range(manager.num_blocks):
        who = owners.get(block, [])
        face = colours[who[0] % len(colours)] if who else "white"
        hatch = "///" if len(who) > 1 else None
        ax.add_patch(Rectangle((block, top), 0.9, 0.9, facecolor=face, edgecolor="black", hatch=hatch, alpha=0.8))
        ax.text(block + 0.45, top + 1.05, str(block), ha="center", fontsize=7)
    for i, (name, seq) in enumerate(seqs.items()):
        y = top - 1 - i
        ax.text(-0.3, y + 0.45, f"{name} ({len(seq)} tokens)", ha="right", va="center", fontsize=8)
        for j, block in enumerate(seq.table):
            filled = min(manager.block_size, len(seq) - j * manager.block_size)
            colour = colours[i % len(colours)]
            ax.add_patch(Rectangle((j, y), 0.9, 0.9, facecolor=colour, edgecolor="black", alpha=0.35))
            ax.text(j + 0.45, y + 0.45, str(block), ha="center", va="center", fontsize=8)
            if filled < manager.block_size:
                ax.text(j + 0.95, y + 0.1, f"{filled}/{manager.block_size}", fontsize=6)
    ax.text(-0.3, top + 0.45, "physical blocks", ha="right", va="center", fontsize=8)
    ax.text(manager.num_blocks, 0.2, "hatched: held by several sequences", ha="right", fontsize=7)
    ax.set_xlim(-0.5, manager.num_blocks + 0.5)
    ax.set_ylim(0, top + 1.4)
    ax.axis("off")
    return ax
