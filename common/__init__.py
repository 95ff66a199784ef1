"""`common`: the one package behind the High-Performance AI Systems course.

Subpackages read as the architecture (see DESIGN.md): `device` <- `kernels` <-
`engine` / `llm` <- `serving`; `secure` and `data` stand on their own; `bench`
times all of them.
"""

__version__ = "0.1.0"
