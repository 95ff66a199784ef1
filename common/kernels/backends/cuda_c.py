"""The CUDA C kernels of the library: the sources in `cuda/`, by name.

One set of sources, three users: the `cupy` backend compiles them with NVRTC
on a GPU, `cuda_cpu` builds them with g++ to run on CPU threads, and
`common.kernels.analysis.cuda_build` compiles them with nvcc to read ptxas's
resource report.
"""

from __future__ import annotations

from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent / "cuda"


class CompileError(RuntimeError):
    """A compiler (nvcc, ptxas, g++) rejected a source; the message holds the compiler's output."""


def cuda_sources() -> dict[str, Path]:
    """The CUDA C sources of the kernel library, by file stem: {'softmax': .../cuda/softmax.cu, ...}."""
    return {p.stem: p for p in sorted(CUDA_DIR.glob("*.cu"))}
