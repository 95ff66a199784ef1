"""Benchmark results: rows written as JSON with the machine they were measured on, targets printed, not asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.device import describe


def save_results(path: str | Path, results: list[dict[str, Any]], **meta: Any) -> Path:
    """Write benchmark rows with the machine they were measured on, as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": describe(), "meta": meta, "results": results}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def print_targets(goals: list[dict[str, Any]], width: int = 55) -> None:
    """One line per target: its value, its bound and met / MISSED. Benchmarks report targets, never assert them."""
    for t in goals:
        bound = (
            f">= {t['at_least']:g}" if "at_least" in t else f"<= {t['at_most']:g}" if "at_most" in t else "no target"
        )
        verdict = "" if t.get("met") is None else "met" if t["met"] else "MISSED"
        print(f"target {t['target']:{width}s} {t['value']:8.2f} ({bound}) {verdict}")
