"""Code the module 02 notebooks measure or read, and the library does not run.

    unfused.py         the ops one NumPy call per step: the baseline fused kernels are measured against
    simd_examples.py   small loops that vectorise, and ones that cannot (a recurrence, a strict sum)
    cpp_ext.py         bias_gelu as a C++/OpenMP torch extension, raced against the Numba kernel
    access_patterns.py CUDA kernels that differ only in their addresses: coalesced or strided, bank conflicts or none

Nothing is imported here: import the module you use, e.g. `from common.kernels.demos import unfused`.
"""
