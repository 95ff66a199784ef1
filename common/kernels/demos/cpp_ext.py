"""bias_gelu as a C++ extension: the same fused loop as the Numba kernel, compiled by gcc.

`load()` compiles the source below with `torch.utils.cpp_extension.load_inline`
(gcc -O3 -march=native -fopenmp) into torch's extension cache
(`$TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions), once: later
calls, in this process or the next, find the built library there (torch keys
it on a hash of the source and flags) and only import it.

What it shows: a C++ extension is not automatically faster than Numba. Both
hand LLVM/gcc a loop; what decides speed is the same in both languages (one
pass over memory, a loop body the compiler can vectorise, threads over rows).
Here the erf is the C library's `std::erf`, which gcc calls one element at a
time, as Numba's float64 path does.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

NAME = "hpai_bias_gelu"

_SOURCE = r"""
#include <torch/extension.h>
#include <cmath>

// gelu(x + bias) over the last axis, fused: one read of x, one write of y.
torch::Tensor bias_gelu(torch::Tensor x, torch::Tensor bias, bool tanh_approx) {
    TORCH_CHECK(x.device().is_cpu() && bias.device().is_cpu(), "bias_gelu_cpp: x and bias must be CPU tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32 && bias.scalar_type() == torch::kFloat32,
                "bias_gelu_cpp: x and bias must be float32");
    TORCH_CHECK(x.dim() >= 1 && bias.dim() == 1 && bias.size(0) == x.size(-1),
                "bias_gelu_cpp: bias must have shape (n,), the last axis of x");
    auto xc = x.contiguous();
    auto bc = bias.contiguous();
    auto y = torch::empty_like(xc);
    const int64_t n = xc.size(-1);
    const int64_t rows = n ? xc.numel() / n : 0;
    const float* xp = xc.data_ptr<float>();
    const float* bp = bc.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const float k = 0.7978845608028654f, c = 0.044715f, inv_sqrt2 = 0.7071067811865476f;
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
        const float* xr = xp + i * n;
        float* yr = yp + i * n;
        if (tanh_approx) {
            for (int64_t j = 0; j < n; ++j) {
                const float z = xr[j] + bp[j];
                yr[j] = z / (1.0f + std::exp(-2.0f * k * (z + c * z * z * z)));
            }
        } else {
            for (int64_t j = 0; j < n; ++j) {
                const float z = xr[j] + bp[j];
                yr[j] = 0.5f * z * (1.0f + std::erf(z * inv_sqrt2));
            }
        }
    }
    return y;
}
"""

FLAGS = ["-O3", "-march=native", "-fopenmp"]


@functools.cache
def load(verbose: bool = False) -> ModuleType:
    """Build the extension the first time (30-60 s), then reuse the cached build; returns the module."""
    from torch.utils.cpp_extension import load_inline

    return load_inline(
        name=NAME,
        cpp_sources=_SOURCE,
        functions=["bias_gelu"],
        extra_cflags=FLAGS,
        extra_ldflags=["-fopenmp"],
        verbose=verbose,
    )


def bias_gelu_cpp(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x + bias) for float32 CPU tensors, with the C++ kernel (built on first use)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return load().bias_gelu(x, bias, approximate == "tanh")
