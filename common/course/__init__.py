"""The instructor's path: exercises assigned and graded with Otter, and the class on a JupyterHub."""

from common.course.exercises import Generated, Score, assign, generate, grade, masters
from common.course.hub import (
    CoursePasswordAuthenticator,
    HubSettings,
    UnixUserSpawner,
    configure,
    course_link,
    ensure_passwords,
    ensure_unix_user,
    read_passwords,
)

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
