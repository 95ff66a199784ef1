"""Test conventions: GPU/HSM tests skip with a reason naming what they need."""

from __future__ import annotations

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


def softhsm_library() -> str | None:
    """SoftHSM2's library, found the way notebooks find it (common.secure.hsm)."""
    from common.secure.hsm import softhsm_library as find

    return find()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    skip_hsm = pytest.mark.skip(reason="needs SoftHSM2's PKCS#11 library (Debian package softhsm2)")
    has_hsm = softhsm_library() is not None
    for item in items:
        if item.get_closest_marker("gpu") and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("hsm") and not has_hsm:
            item.add_marker(skip_hsm)
