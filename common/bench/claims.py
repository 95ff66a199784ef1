"""A notebook's timing claim, checked and reported with its margin.

A notebook ends with assert cells that check what it claimed, as ratios measured in the same run. Written
with `at_least` / `at_most`, each such check prints what was measured, the bound and the margin between
them (how many times the bound the measurement could shrink before the claim fails), so a reader sees how
close a claim came, and a run on a busy machine can be searched for the tightest margins. Set
`HPAI_CLAIMS_LOG` to a file path and every check is also appended there as one JSON line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

LOG_ENV = "HPAI_CLAIMS_LOG"


class ClaimFailed(AssertionError):
    """A measured claim did not hold in this run."""


@dataclass(frozen=True)
class Claim:
    """One checked claim: `measured` against `bound`; `margin` >= 1 means it held."""

    name: str
    measured: float
    bound: float
    direction: str  # ">=" or "<="
    margin: float

    @property
    def held(self) -> bool:
        return self.margin >= 1.0

    def __str__(self) -> str:
        verdict = "held" if self.held else "FAILED"
        return (
            f"{verdict}: {self.name}: {self.measured:.3g} {self.direction} {self.bound:.3g} (margin {self.margin:.2f}x)"
        )


def _check(name: str, measured: float, bound: float, direction: str) -> Claim:
    for label, value in (("measured", measured), ("bound", bound)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: {label} must be a positive finite ratio or quantity, got {value!r}")
    margin = measured / bound if direction == ">=" else bound / measured
    claim = Claim(name, float(measured), float(bound), direction, margin)
    print(claim)
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({**asdict(claim), "cwd": os.getcwd()}) + "\n")
    if not claim.held:
        raise ClaimFailed(str(claim))
    return claim


def at_least(name: str, measured: float, bound: float) -> Claim:
    """Check that `measured` >= `bound` (e.g. a speed-up of at least 1.5x); print and return the claim."""
    return _check(name, measured, bound, ">=")


def at_most(name: str, measured: float, bound: float) -> Claim:
    """Check that `measured` <= `bound` (e.g. a slowdown of at most 2.5x); print and return the claim."""
    return _check(name, measured, bound, "<=")
