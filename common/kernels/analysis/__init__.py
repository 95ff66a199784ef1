"""Tools that say what a kernel costs, without running it for time.

    roofline.py     the bytes an op must move and the FLOPs it must do: where it sits on a roofline
    simd.py         Numba's LLVM IR and assembly: did the loop become SIMD, did prange parallelise it
    cuda_build.py   nvcc and ptxas without a GPU: registers, shared memory and spills per kernel
    occupancy.py    how many warps of a kernel an SM holds, and which resource stops it holding more
    memory_access.py  the addresses each warp touches on the simulator: 32-byte sectors (coalescing), bank conflicts

Nothing is imported here (`simd` needs Numba, `cuda_build` the CUDA toolkit, `memory_access` the simulator):
import the module you use, e.g. `from common.kernels.analysis import roofline`.
"""
