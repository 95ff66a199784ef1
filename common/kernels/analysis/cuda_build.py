"""Compile CUDA kernels without a GPU and read back what each one costs the hardware.

`nvcc -cubin -Xptxas -v` compiles CUDA C to machine code for one architecture
and has ptxas print, per kernel, the registers each thread holds, the static
shared memory each block claims, the bytes spilled to local memory, the stack
frame and the constant bank. Those numbers decide occupancy
(`common.kernels.analysis.occupancy`) and explain most slow kernels, and none of them
needs a GPU to obtain. Numba CUDA kernels get the same report: Numba compiles
them to PTX and `ptxas -v` (next to nvcc) assembles that PTX.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common.kernels.backends.cuda_c import CUDA_DIR, CompileError, cuda_sources

NVCC_MISSING = "needs nvcc (CUDA toolkit)"
_REPO_ROOT = Path(__file__).resolve().parents[3]


class ToolkitMissing(RuntimeError):
    """nvcc or ptxas is not on PATH."""


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reports for one kernel on one architecture."""

    kernel: str
    arch: str
    registers: int  # per thread
    shared_bytes: int  # static shared memory per block (Triton: the dynamic amount it always launches with)
    spill_stores: int  # bytes a thread writes to local memory because registers ran out
    spill_loads: int
    stack_bytes: int  # the thread's stack frame: local arrays and spills live here, in (slow) local memory
    constant_bytes: int  # constant banks (cmem[0] holds the kernel's parameters)
    barriers: int | None  # named barriers used (__syncthreads uses one); None if ptxas did not say
    threads: int | None = None  # block size fixed at compile time (Triton: num_warps * 32); else chosen at launch


@dataclass(frozen=True)
class BuildReport:
    """The kernels of one compiled source, and ptxas's log as printed."""

    source: str
    arch: str
    kernels: dict[str, KernelResources]
    log: str = field(repr=False)

    def __getitem__(self, kernel: str) -> KernelResources:
        return self.kernels[kernel]


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(.*)")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")
_CMEM = re.compile(r"(\d+) bytes cmem\[\d+\]")


def parse_ptxas(log: str) -> dict[str, KernelResources]:
    """Per-kernel resources from `ptxas -v` output (CUDA 11 to 13 formats).

    ptxas prints, for each entry function, a 'Compiling entry function' line,
    its 'Function properties' with the stack frame and spills, then the 'Used N
    registers, ...' line. Device functions that were not inlined get properties
    but no 'Used' line of their own and are left out.
    """
    frames: dict[str, tuple[int, int, int]] = {}
    kernels: dict[str, KernelResources] = {}
    entry: tuple[str, str] | None = None
    props: str | None = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            entry = (m.group(1), m.group(2))
        elif m := _PROPERTIES.search(line):
            props = m.group(1)
        elif (m := _FRAME.search(line)) and props is not None:
            frames[props] = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        elif (m := _USED.search(line)) and entry is not None:
            name, arch = entry
            rest = m.group(2)
            stack, stores, loads = frames.get(name, (0, 0, 0))
            barriers = _BARRIERS.search(rest)
            smem = _SMEM.search(rest)
            kernels[name] = KernelResources(
                kernel=name,
                arch=arch,
                registers=int(m.group(1)),
                shared_bytes=int(smem.group(1)) if smem else 0,
                spill_stores=stores,
                spill_loads=loads,
                stack_bytes=stack,
                constant_bytes=sum(int(c) for c in _CMEM.findall(rest)),
                barriers=int(barriers.group(1)) if barriers else None,
            )
            entry = None
    return kernels


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolkitMissing(f"{name} not found on PATH: this {NVCC_MISSING}; install it or add its bin/ to PATH")
    return path


def nvcc_available() -> bool:
    """True when nvcc and ptxas are on PATH (no GPU needed to compile)."""
    return shutil.which("nvcc") is not None and shutil.which("ptxas") is not None


def _source(path_or_source: str | Path) -> tuple[str, str]:
    """(label, CUDA C text) of a .cu path, a library source name ('softmax') or source text."""
    if isinstance(path_or_source, Path) or (
        "\n" not in path_or_source and (path_or_source.endswith(".cu") or path_or_source in cuda_sources())
    ):
        path = Path(path_or_source)
        if not path.suffix:
            path = CUDA_DIR / f"{path_or_source}.cu"
        if not path.is_file():
            raise FileNotFoundError(f"no CUDA source at {path}")
        return path.name, path.read_text()
    return "<source>", path_or_source


def _run(cmd: list[str], cwd: str) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise CompileError(f"{' '.join(cmd)} failed:\n{log}")
    return log


@functools.cache
def _compile(label: str, text: str, arch: str, options: tuple[str, ...]) -> BuildReport:
    nvcc = _tool("nvcc")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.cu").write_text(text)
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", *options, "-o", "kernel.cubin", "kernel.cu"]
        log = _run(cmd, tmp)
    return BuildReport(label, arch, parse_ptxas(log), log)


def compile_cubin(path_or_source: str | Path, arch: str = "sm_80", options: tuple[str, ...] = ()) -> BuildReport:
    """Compile CUDA C to a cubin for `arch` and report each kernel's resources.

    `path_or_source` is a path to a .cu file, the name of a library source
    ('softmax' for cuda/softmax.cu) or the source text itself. `options` go to
    nvcc as given, e.g. ('-maxrregcount=24',) to cap registers and watch spills
    appear. Results are cached per (source, arch, options).
    """
    label, text = _source(path_or_source)
    return _compile(label, text, arch, tuple(options))


def compile_ptx(path_or_source: str | Path, arch: str = "sm_80") -> str:
    """The PTX (the virtual ISA that ptxas turns into machine code) of CUDA C, as text."""
    _, text = _source(path_or_source)
    nvcc = _tool("nvcc")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.cu").write_text(text)
        _run([nvcc, "-ptx", f"-arch={arch}", "-o", "kernel.ptx", "kernel.cu"], tmp)
        return (Path(tmp) / "kernel.ptx").read_text()


def ptxas_report(ptx: str, arch: str = "sm_80", label: str = "<ptx>") -> BuildReport:
    """Assemble PTX text with `ptxas -v` for `arch` and report each kernel's resources."""
    ptxas = _tool("ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.ptx").write_text(ptx)
        log = _run([ptxas, "-v", f"-arch={arch}", "-o", "kernel.cubin", "kernel.ptx"], tmp)
    return BuildReport(label, arch, parse_ptxas(log), log)


# --- Numba CUDA kernels ---------------------------------------------------------------------------------

# Run in a child process: Numba's simulator (NUMBA_ENABLE_CUDASIM=1, which this
# machine's tests and notebooks use) replaces the compiler, so no PTX can be
# made in a process where it is on. The child imports Numba with it off.
_NUMBA_PTX_CHILD = """
import json, sys, types
import numba.cuda.dispatcher
arch = sys.argv[1]
cc = (int(arch[3:-1]), int(arch[-1]))
# Numba compiles device functions for "the current device"; there may be none,
# so answer with the target architecture (the kernel itself gets cc= below).
numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
from numba import cuda
from common.kernels.backends import numba_cuda
names = sys.argv[2:] or list(numba_cuda.KERNEL_SIGNATURES)
ptx = {}
for name in names:
    kernel = getattr(numba_cuda, name)
    ptx[name] = cuda.compile_ptx(kernel.py_func, numba_cuda.KERNEL_SIGNATURES[name], cc=cc)[0]
json.dump(ptx, sys.stdout)
"""


def _child_env(without: str) -> dict[str, str]:
    """This process's environment for a compiling child: `without` unset, and `common` importable from this tree."""
    env = {k: v for k, v in os.environ.items() if k != without}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


@functools.cache
def numba_ptx(arch: str = "sm_80", kernels: tuple[str, ...] = ()) -> dict[str, str]:
    """PTX of the Numba CUDA kernels in `common.kernels.backends.numba_cuda` (all of them by default), by name.

    Compiled in a child Python with the simulator off, so it works in any process and without a GPU.
    """
    if not re.fullmatch(r"sm_\d\d", arch):
        raise ValueError(f"arch must look like 'sm_80', got {arch!r}")
    env = _child_env(without="NUMBA_ENABLE_CUDASIM")
    done = subprocess.run(
        [sys.executable, "-c", _NUMBA_PTX_CHILD, arch, *kernels], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise CompileError(f"compiling the Numba CUDA kernels to PTX failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def numba_report(arch: str = "sm_80", kernels: tuple[str, ...] = ()) -> BuildReport:
    """ptxas's resource report for the Numba CUDA kernels, under their Python names."""
    found: dict[str, KernelResources] = {}
    logs = []
    for name, ptx in numba_ptx(arch, tuple(kernels)).items():
        report = ptxas_report(ptx, arch, label=name)
        (resources,) = report.kernels.values()  # one entry per PTX: Numba's mangled name for `name`
        found[name] = KernelResources(**{**resources.__dict__, "kernel": name})
        logs.append(report.log)
    return BuildReport("numba_cuda.py", arch, found, "\n".join(logs))


_TRITON_CHILD = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = json.loads(sys.argv[1])
fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
source = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"])
target = GPUTarget("cuda", int(spec["arch"][3:]), 32)
compiled = triton.compile(source, target=target, options={"num_warps": spec["num_warps"]})
meta = compiled.metadata
json.dump({"ptx": compiled.asm["ptx"], "shared": meta.shared, "num_warps": meta.num_warps}, sys.stdout)
"""


@functools.cache
def _triton_build(spec: str) -> dict:
    # A child process: under TRITON_INTERPRET=1 (this machine's notebooks) kernels are interpreted, not compiled.
    env = _child_env(without="TRITON_INTERPRET")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set so it does not warn about it
    done = subprocess.run([sys.executable, "-c", _TRITON_CHILD, spec], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise CompileError(f"compiling the Triton kernel failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def triton_report(
    module: str,
    kernel: str,
    signature: dict[str, str],
    constexprs: dict[str, int | bool],
    arch: str = "sm_80",
    num_warps: int = 4,
) -> BuildReport:
    """ptxas's resource report for a Triton kernel, compiled for `arch` without a GPU.

    Triton fixes the block size (num_warps * 32 threads) and the compile-time
    constants (`constexprs`, e.g. BLOCK) per compiled kernel, so both are
    arguments. `signature` gives each runtime argument's Triton type
    ('*fp32', 'i32', 'fp32') and 'constexpr' for the constants. Its shared
    memory is dynamic, sized by Triton: reported from Triton's metadata.
    """
    if not re.fullmatch(r"sm_\d\d", arch):
        raise ValueError(f"arch must look like 'sm_80', got {arch!r}")
    spec = {"module": module, "kernel": kernel, "signature": signature, "constexprs": constexprs}
    built = _triton_build(json.dumps({**spec, "arch": arch, "num_warps": num_warps}, sort_keys=True))
    report = ptxas_report(built["ptx"], arch, label=kernel)
    (resources,) = report.kernels.values()
    shared = max(resources.shared_bytes, built["shared"])
    found = KernelResources(
        **{**resources.__dict__, "kernel": kernel, "shared_bytes": shared, "threads": 32 * built["num_warps"]}
    )
    return BuildReport(f"{module}.{kernel}", arch, {kernel: found}, report.log)


def library_reports(arch: str = "sm_80") -> list[BuildReport]:
    """The report of every CUDA C source of the library, then of the Numba CUDA kernels."""
    return [compile_cubin(path, arch) for path in cuda_sources().values()] + [numba_report(arch)]
