"""Run the CUDA C kernels of `cuda/*.cu` on the CPU: one OS thread per CUDA thread.

Without a GPU the CUDA C sources can be compiled (`analysis.cuda_build`) but not run,
so their arithmetic would go untested. Here g++ compiles the same source with
a small header that maps CUDA's names to C++: `threadIdx` and `blockIdx` are
thread-local variables, `__shared__` arrays are statics shared by the block's
threads, and `__syncthreads()` is a pthread barrier. A launch runs the blocks
one after another, each as `blockDim` real threads released together.

It checks results and barrier placement; it says nothing about speed, and
nothing about warps (there are none: a race that a warp's lockstep would hide
can show up here, and the other way round). Kernels are called as CuPy calls
them, `kernel(grid, block, args)`, with NumPy arrays in place of CuPy's.
"""

from __future__ import annotations

import ctypes
import functools
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.kernels.backends.cuda_c import CompileError, cuda_sources

_SHIM = r"""
#include <math.h>
#include <pthread.h>
#include <string.h>
struct hpai_dim3 { unsigned int x, y, z; };
static thread_local hpai_dim3 threadIdx, blockIdx;
static hpai_dim3 blockDim, gridDim;
static pthread_barrier_t hpai_barrier;
static int hpai_barrier_ready = 0;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() pthread_barrier_wait(&hpai_barrier)
static inline float __int_as_float(unsigned int bits) { float f; memcpy(&f, &bits, 4); return f; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
extern "C" void hpai_configure(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz) {
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    if (hpai_barrier_ready) pthread_barrier_destroy(&hpai_barrier);
    pthread_barrier_init(&hpai_barrier, 0, bx * by * bz);
    hpai_barrier_ready = 1;
}
extern "C" void hpai_set_thread(unsigned bx, unsigned by, unsigned bz, unsigned tx, unsigned ty, unsigned tz) {
    blockIdx = {bx, by, bz};
    threadIdx = {tx, ty, tz};
}
"""

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_CTYPES = (("*", ctypes.c_void_p), ("long long", ctypes.c_longlong), ("int", ctypes.c_int), ("float", ctypes.c_float))


def kernel_parameters(source: str) -> dict[str, list[str]]:
    """The parameter list of every `extern "C" __global__` kernel in a CUDA C source, e.g. ['const float*', 'int']."""
    found = {}
    for name, params in _KERNEL.findall(source):
        types = []
        for p in params.split(","):
            words = p.replace("__restrict__", "").replace("*", " * ").split()
            types.append(" ".join(words[:-1]).replace(" *", "*"))
        found[name] = types
    return found


def _ctype(param: str) -> type:
    for key, ctype in _CTYPES:
        if key in param:
            return ctype
    raise TypeError(f"no ctypes mapping for kernel parameter type {param!r}")


class CpuKernel:
    """One kernel of a CPU-compiled source, called as CuPy calls a RawKernel: kernel(grid, block, args)."""

    def __init__(self, library: ctypes.CDLL, lock: threading.Lock, name: str, params: list[str]):
        self.name = name
        self._library = library
        self._lock = lock  # one launch at a time: the grid, block and barrier are the library's globals
        self._function = getattr(library, name)
        self._function.argtypes = [_ctype(p) for p in params]
        self._function.restype = None
        self.params = params

    def __call__(self, grid: Sequence[int], block: Sequence[int], args: Sequence[Any]) -> None:
        grid3 = (*grid, 1, 1)[:3]
        block3 = (*block, 1, 1)[:3]
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments ({self.params}), got {len(args)}")
        values = []
        for param, arg in zip(self.params, args, strict=True):
            if "*" in param:
                if not (isinstance(arg, np.ndarray) and arg.flags.c_contiguous):
                    raise TypeError(f"{self.name}: a {param} argument takes a C-contiguous numpy array")
                values.append(arg.ctypes.data)
            else:
                values.append(arg.item() if isinstance(arg, np.generic) else arg)
        with self._lock:
            self._library.hpai_configure(*grid3, *block3)
            for bz, by, bx in np.ndindex(grid3[2], grid3[1], grid3[0]):
                errors: list[BaseException] = []
                threads = [
                    threading.Thread(target=self._thread, args=((bx, by, bz), (tx, ty, tz), values, errors))
                    for tz, ty, tx in np.ndindex(block3[2], block3[1], block3[0])
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if errors:
                    raise errors[0]

    def _thread(self, block: tuple[int, ...], thread: tuple[int, ...], values: list, errors: list) -> None:
        try:
            self._library.hpai_set_thread(*block, *thread)
            self._function(*values)  # ctypes lets go of the GIL here, so the threads meet at the barrier
        except BaseException as e:  # surfaced by the launching thread
            errors.append(e)


@functools.cache
def load(source: str) -> dict[str, CpuKernel]:
    """Compile cuda/<source>.cu for the CPU with g++ and return its kernels by name."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("running CUDA C on the CPU needs g++ (Debian package g++)")
    text = cuda_sources()[source].read_text()
    tmp = Path(tempfile.mkdtemp(prefix=f"cuda_cpu_{source}_"))
    (tmp / "shim.h").write_text(_SHIM)
    (tmp / "kernel.cpp").write_text(text)
    cmd = [gxx, "-O1", "-shared", "-fPIC", "-include", "shim.h", "kernel.cpp", "-o", "kernel.so", "-lpthread"]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    if done.returncode != 0:
        raise CompileError(f"g++ could not build {source}.cu for the CPU:\n{done.stderr}")
    library = ctypes.CDLL(str(tmp / "kernel.so"))
    for name in ("hpai_configure", "hpai_set_thread"):
        getattr(library, name).argtypes = [ctypes.c_uint] * 6
    lock = threading.Lock()
    return {name: CpuKernel(library, lock, name, params) for name, params in kernel_parameters(text).items()}


def function(source: str, kernel: str) -> CpuKernel:
    """Like `cupy.RawModule(code=...).get_function(kernel)` for cuda/<source>.cu, on the CPU."""
    kernels = load(source)
    if kernel not in kernels:
        raise KeyError(f"{source}.cu has no kernel {kernel!r}: it has {sorted(kernels)}")
    return kernels[kernel]
