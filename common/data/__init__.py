"""The data path of module 06: synthetic events (`synth`), and later pipelines and zero-copy transport.

Depends on nothing above it in `common` (DESIGN.md): NumPy, PyArrow and Polars only.
"""
