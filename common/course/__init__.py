"""The instructor's path: exercises assigned and graded with Otter, and the class on a JupyterHub."""

from common.course.exercises import Generated, Score, assign, generate, grade, masters

__all__ = ["Generated", "Score", "assign", "generate", "grade", "masters"]
