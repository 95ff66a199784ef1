"""The unfused baselines compute the same ops, and the traffic/FLOP model counts what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.kernels import reference
from common.kernels.analysis import roofline
from common.kernels.demos import unfused
from tests.kernels.tolerances import tolerance


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


CASES = [(n, a) for n in sorted(unfused.UNFUSED) for a in (("none", "tanh") if "gelu" in n else (None,))]


@pytest.mark.parametrize(("name", "approximate"), CASES)
def test_unfused_matches_the_reference(name, approximate, rng):
    x = rng.standard_normal((5, 37), dtype=np.float32) * 3
    vec = rng.standard_normal(37, dtype=np.float32)
    args = {"softmax": (x,), "gelu": (x,), "bias_gelu": (x, vec), "layernorm": (x, vec, vec + 1)}[name]
    kwargs = {} if approximate is None else {"approximate": approximate}
    got = unfused.UNFUSED[name](*args, **kwargs)
    want = getattr(reference, name)(*args, **kwargs)
    rtol, atol = tolerance("float32", reduction=37)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def test_memory_bound_ops_are_read_from_the_ops_with_their_flops_per_element():
    assert roofline.MEMORY_BOUND == ("softmax", "layernorm", "gelu", "bias_gelu")
    assert set(unfused.UNFUSED) == set(roofline.MEMORY_BOUND)  # a baseline for every one
    x = np.ones((3, 10), np.float32)
    per_element = {name: roofline.flops(name, x, x[0], x[0]) / x.size for name in roofline.MEMORY_BOUND}
    assert per_element == {"softmax": 5, "layernorm": 8, "gelu": 8, "bias_gelu": 9}


def test_min_bytes_reads_inputs_once_and_writes_the_output_once():
    x, w = np.ones((64, 128), np.float32), np.ones(128, np.float32)
    assert roofline.min_bytes("softmax", x) == 2 * x.nbytes
    assert roofline.min_bytes("layernorm", x, w, w) == 2 * x.nbytes + 2 * w.nbytes
    assert roofline.min_bytes("bias_gelu", torch.ones(64, 128), torch.ones(128)) == 2 * x.nbytes + w.nbytes
    a, b = np.ones((8, 16), np.float64), np.ones((16, 4), np.float64)
    assert roofline.min_bytes("matmul", a, b) == a.nbytes + b.nbytes + 8 * 4 * 8
    q = np.ones((2, 10, 16), np.float32)
    v = np.ones((2, 10, 8), np.float32)
    assert roofline.min_bytes("attention", q, q, v) == 2 * q.nbytes + v.nbytes + 2 * 10 * 8 * 4


def test_flops_count_multiply_adds_twice_and_causal_halves_attention():
    a, b = np.ones((8, 16)), np.ones((16, 4))
    assert roofline.flops("matmul", a, b) == 2 * 8 * 16 * 4
    q = np.ones((3, 10, 16))
    full = roofline.flops("attention", q, q, q)
    assert full == 2 * 3 * 10 * 10 * 32
    assert roofline.flops("attention", q, q, q, causal=True) == full / 2
    with pytest.raises(ValueError, match="unknown op"):
        roofline.flops("conv", a)


def test_memory_bound_ops_sit_left_of_any_realistic_ridge():
    x, w = np.ones((256, 256), np.float32), np.ones(256, np.float32)
    args = {"softmax": (x,), "gelu": (x,), "bias_gelu": (x, w), "layernorm": (x, w, w)}
    for name in roofline.MEMORY_BOUND:
        assert roofline.intensity(name, *args[name]) < 2.0, name  # CPU ridges are ~5-20 FLOP/byte, GPU ~10-300
    big = np.ones((1024, 1024), np.float32)
    assert roofline.intensity("matmul", big, big) > 100  # n/6 FLOP per byte for square fp32
