"""Test conventions: GPU/HSM tests skip with a reason naming what they need."""

from __future__ import annotations

import ctypes.util
import glob
import os

import pytest

from common.device import cuda_available

HAS_CUDA = cuda_available()

# Numba and Triton read these when they are first imported: without a GPU, CUDA
# kernels run on Numba's simulator and Triton kernels on Triton's interpreter, so
# they are still tested here.
if not HAS_CUDA:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    os.environ.setdefault("TRITON_INTERPRET", "1")

SOFTHSM_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


def softhsm_library() -> str | None:
    found = [p for p in SOFTHSM_PATHS if os.path.exists(p)] + glob.glob("/usr/lib/*/softhsm/libsofthsm2.so")
    return found[0] if found else ctypes.util.find_library("softhsm2")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    skip_hsm = pytest.mark.skip(reason="needs SoftHSM2's PKCS#11 library (Debian package softhsm2)")
    has_hsm = softhsm_library() is not None
    for item in items:
        if item.get_closest_marker("gpu") and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("hsm") and not has_hsm:
            item.add_marker(skip_hsm)
