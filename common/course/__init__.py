"""The instructor's path: exercises assigned and graded with Otter, and the class on a JupyterHub.

The hub's names load JupyterHub on first use (`common.course.HubSettings`), not on `import common.course`:
`make assign` and `make grade` never need it, and importing it costs ~1.5 s of CPU.
"""

from __future__ import annotations

import importlib
from typing import Any

from common.course.exercises import Generated, Score, assign, generate, grade, masters

_HUB_NAMES = frozenset(
    {
        "CoursePasswordAuthenticator",
        "HubSettings",
        "UnixUserSpawner",
        "configure",
        "course_link",
        "ensure_passwords",
        "ensure_unix_user",
        "read_passwords",
    }
)


def __getattr__(name: str) -> Any:
    if name in _HUB_NAMES:
        return getattr(importlib.import_module("common.course.hub"), name)
    raise AttributeError(f"module 'common.course' has no attribute {name!r}")


__all__ = [
    "CoursePasswordAuthenticator",
    "Generated",
    "HubSettings",
    "Score",
    "UnixUserSpawner",
    "assign",
    "configure",
    "course_link",
    "ensure_passwords",
    "ensure_unix_user",
    "generate",
    "grade",
    "masters",
    "read_passwords",
]
