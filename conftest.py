"""Repo-wide pytest hooks: the per-notebook time budget.

Each notebook must run in under HPAI_NOTEBOOK_BUDGET_S seconds (90 by default)
on 2 cores. nbval reports one item per cell; this sums them per notebook
(kernel start-up included) and fails the session when one is over budget.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

NOTEBOOK_BUDGET_S = float(os.environ.get("HPAI_NOTEBOOK_BUDGET_S", "90"))
_seconds: dict[str, float] = defaultdict(float)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def _over_budget() -> dict[str, float]:
    return {p: s for p, s in _seconds.items() if s > NOTEBOOK_BUDGET_S}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _is_worker(session.config) and _over_budget() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _is_worker(config) or not _seconds:
        return
    terminalreporter.section("notebook wall time")
    for path, s in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        flag = "  OVER BUDGET" if s > NOTEBOOK_BUDGET_S else ""
        terminalreporter.write_line(f"{s:6.1f} s  {path}{flag}")
    for path, s in _over_budget().items():
        terminalreporter.write_line(
            f"FAILED budget: {path} took {s:.1f} s, the budget is {NOTEBOOK_BUDGET_S:.0f} s", red=True
        )


# Student copies of the exercises (made by `make assign`) fail their checks by design until a learner answers:
# nbval runs the masters (exercises/solutions/), and tests/course/test_exercises.py proves each copy fails.
collect_ignore_glob = ["modules/*/exercises/exercises.ipynb"]
