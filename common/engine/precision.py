"""Numeric precision as a model transform: fp32, bf16, fp16, int8 (dynamic).

Precision is a runtime option, not a property of the model: the same `Model`
runs in any precision the device supports, and module 03/05 measure what
each costs in speed and accuracy on the machine at hand.
"""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import torch
from torch import nn

from common.device import Device

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(precision: str, device: Device) -> None:
    """Refuse combinations that cannot run (or only run as a trap) on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {list(PRECISIONS)}")
    if precision == "int8" and device.is_gpu:
        raise ValueError("precision 'int8' is dynamic quantisation for the CPU; on a GPU use 'fp16' or 'bf16'")
    if precision == "fp16" and not device.is_gpu:
        raise ValueError("precision 'fp16' needs a GPU (CPU fp16 matmul is emulated); on the CPU use 'bf16' or 'int8'")


def apply_precision(module: nn.Module, precision: str, device: Device) -> nn.Module:
    """Return `module` converted to `precision` (on `device`, in eval mode)."""
    check_precision(precision, device)
    module = module.to(device.torch).eval()
    if precision == "bf16":
        return module.to(torch.bfloat16)
    if precision == "fp16":
        return module.to(torch.float16)
    if precision == "int8":
        # Linear weights stored as int8 with a per-tensor scale; activations are
        # quantised on the fly per batch, multiplied by fbgemm's int8 kernels. torch.ao
        # warns that torchao succeeds it, but torchao's eager int8 path multiplies with
        # torch._int_mm, a scalar loop on CPUs without AVX512-VNNI (40x slower on MiniLM):
        # modules/00_design/README.md says why, tests/engine/test_precision.py pins it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
    return module
