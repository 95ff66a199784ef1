"""Look inside what Numba compiled: its LLVM IR, its assembly, and whether the loops became SIMD.

A loop vectorised when its LLVM IR works on vector types (`<8 x float>`: eight
float32 lanes, one AVX register) and its assembly uses *packed* instructions
(`vmulps`, `vfmadd231ps`, ...: ps/pd = packed single/double) on xmm (128-bit),
ymm (256-bit) or zmm (512-bit) registers. The scalar forms (`vmulss`,
`vaddsd`: ss/sd = scalar single/double) use the same registers but one lane.

    from common.kernels.analysis import simd
    asm = simd.assembly(fn)                 # fn: an @njit function called (or compiled) once
    simd.packed_simd_instructions(asm)      # Counter({'vfmadd231ps zmm': 4, ...}); empty: no SIMD math
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from numba import jit
from numba.core import config

# Floating-point arithmetic, not data movement: a vmovups copies lanes but computes nothing, and
# vxorps xmm0, xmm0 is how compilers zero a scalar register.
_ARITH = r"(?:add|sub|mul|div|min|max|sqrt|rcp14|rsqrt14|fn?m(?:add|sub)(?:132|213|231)|fmaddsub(?:132|213|231))"
_PACKED = re.compile(rf"^\s*(v?{_ARITH}p[sd])\s+(.*)$")
_SCALAR = re.compile(rf"^\s*(v?{_ARITH}s[sd])\s+(.*)$")
_REGISTER = re.compile(r"\b([xyz]mm)\d+")
_VECTOR_TYPE = re.compile(r"<(\d+) x (float|double|half|i\d+)>")
_WIDTH = {"xmm": 0, "ymm": 1, "zmm": 2}


_FRESH: dict[Any, Any] = {}


def _compiled(fn: Any, signature: Any) -> tuple[Any, Any]:
    """A dispatcher whose code can be inspected, and the signature to inspect.

    Code loaded from Numba's on-disk cache (`cache=True`) keeps no IR, so the
    function is compiled again, once, with the same options but no cache.
    """
    if signature is None:
        if len(fn.signatures) != 1:
            raise ValueError(
                f"{fn.__name__} has {len(fn.signatures)} compiled signatures {fn.signatures}: "
                "pass signature=, or call the function once first so there is exactly one"
            )
        signature = fn.signatures[0]
    if fn not in _FRESH:
        _FRESH[fn] = jit(**fn.targetoptions)(fn.py_func)
    fresh = _FRESH[fn]
    fresh.compile(signature)
    return fresh, fresh.nopython_signatures[-1].args if signature not in fresh.signatures else signature


def llvm_ir(fn: Any, signature: Any = None) -> str:
    """The optimised LLVM IR Numba generated for `fn` (an @njit dispatcher) at `signature`."""
    fresh, signature = _compiled(fn, signature)
    return fresh.inspect_llvm(signature)


def assembly(fn: Any, signature: Any = None) -> str:
    """The machine code (AT&T syntax) for `fn` at `signature`, as the CPU runs it."""
    fresh, signature = _compiled(fn, signature)
    return fresh.inspect_asm(signature)


def _count(pattern: re.Pattern[str], asm: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for line in asm.splitlines():
        match = pattern.match(line)
        if match:
            registers = _REGISTER.findall(match.group(2))
            widest = max(registers, key=_WIDTH.__getitem__) if registers else "mem"
            found[f"{match.group(1)} {widest}"] += 1
    return found


def packed_simd_instructions(asm: str) -> Counter[str]:
    """Packed floating-point arithmetic in `asm`, by mnemonic and widest register: 'vfmadd231ps zmm'."""
    return _count(_PACKED, asm)


def scalar_float_instructions(asm: str) -> Counter[str]:
    """Scalar (one-lane) floating-point arithmetic in `asm`, by mnemonic: 'vaddsd xmm'."""
    return _count(_SCALAR, asm)


def llvm_vector_types(ir: str) -> Counter[str]:
    """Vector types used in the IR, e.g. Counter({'<8 x float>': 12}); empty when nothing vectorised."""
    return Counter(f"<{n} x {t}>" for n, t in _VECTOR_TYPE.findall(ir))


def vector_lanes(ir: str, element: str = "float") -> int:
    """The widest vector of `element` ('float', 'double') in the IR: 16 for AVX-512 float32, 1 if none."""
    return max((int(n) for n, t in _VECTOR_TYPE.findall(ir) if t == element), default=1)


# Bits per register: a float32 lane is 32 of them.
REGISTER_BITS = {"xmm": 128, "ymm": 256, "zmm": 512}


def widest_packed_register(asm: str, precision: str = "ps") -> str | None:
    """The widest register ('xmm', 'ymm', 'zmm') that packed arithmetic of `precision` ('ps' float32, 'pd'
    float64) in `asm` used, or None if there is none.

    This is what the code does, which the CPU's flags alone do not say: with AVX-512, LLVM still picks
    256-bit ymm vectors for loops on Intel's cores it tunes with `prefer-256-bit` (Skylake-SP to Sapphire
    Rapids) and 512-bit zmm ones on AMD Zen 4, whose tuning lacks it.
    """
    if precision not in ("ps", "pd"):
        raise ValueError(f"precision must be 'ps' (float32) or 'pd' (float64), got {precision!r}")
    widths = [key.split()[1] for key in packed_simd_instructions(asm) if key.split()[0].endswith(precision)]
    registers = [w for w in widths if w in _WIDTH]
    return max(registers, key=_WIDTH.__getitem__) if registers else None


def float32_lanes(register: str | None) -> int:
    """float32 numbers one instruction works on in `register` ('ymm': 8); 1 for None (scalar code)."""
    return REGISTER_BITS[register] // 32 if register else 1


def target_cpu() -> str:
    """The CPU name Numba tells LLVM to compile and tune for: the host's (e.g. 'skylake-avx512', 'znver2'),
    unless NUMBA_CPU_NAME sets another."""
    import llvmlite.binding as llvm  # type: ignore[import-untyped]  # llvmlite ships no type stubs

    return config.CPU_NAME or llvm.get_host_cpu_name()  # type: ignore[attr-defined]  # numba's config sets its names at import


def parallel_loops(fn: Any, signature: Any = None) -> int:
    """How many loops Numba turned into parallel ones (parfors) in `fn`: 0 means it all runs on one thread."""
    fresh, signature = _compiled(fn, signature)
    return len(fresh.get_metadata(signature).get("parfors") or {})
