"""The backends: one module per way of running the ops, each with one function per op, named as the op.

    numba_cpu.py (+ numba_attention.py)   Numba @njit(parallel=True) on the CPU
    torch_ops.py                          PyTorch's own kernels, on the tensor's device
    numba_cuda.py                         Numba CUDA kernels (on the simulator without a GPU)
    cuda/*.cu, cuda_c.py                  CUDA C sources, by name
    cupy_ops.py                           ... launched through CuPy on a GPU
    cuda_cpu.py                           ... or run on CPU threads (g++), to test them without one
    triton_ops.py                         Triton kernels (on the interpreter without a GPU)

Nothing is imported here: `common.kernels.registry` imports a backend on first
use, so a missing Numba, CuPy or Triton costs nothing until it is asked for.
Call the ops through `common.kernels` (`softmax(x, backend="numba")`); import a
module here to read or time one backend's own code.
"""
