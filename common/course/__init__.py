"""The instructor's path: exercises assigned and graded with Otter, and the class on a JupyterHub."""
