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


@pytest.mark.parametrize(("n", "d", "block_q"), [(64, 16, 32), (100, 8, 32), (300, 64, 128)])
def test_attention_traffic_counts_what_each_loop_reads_and_writes(n, d, block_q):
    """Counted independently by walking the loops: naive's three passes over the scores, flash's query blocks
    that each stream every key tile of k and v (a ragged last block still reads all of k and v)."""
    heads, item, block_k = 3, 4, 16
    naive = n * d * 2 + n * n + (n * n * 2) + (n * n + n * d) + n * d  # q,k -> s; softmax in place; p,v -> out
    flash = 0
    for start in range(0, n, block_q):
        rows = min(block_q, n - start)
        flash += rows * d  # the query block
        for key in range(0, n, block_k):
            flash += 2 * min(block_k, n - key) * d  # its k and v tile
        flash += rows * d  # the output block
    assert roofline.attention_traffic("naive", heads, n, d, block_q=block_q) == heads * naive * item
    assert roofline.attention_traffic("flash", heads, n, d, block_q=block_q) == heads * flash * item


def test_attention_traffic_grows_as_n_squared_and_flash_wins_only_with_wide_query_tiles():
    def ratio(algorithm, block_q):
        big, small = (roofline.attention_traffic(algorithm, 1, n, 64, block_q=block_q) for n in (8192, 4096))
        return big / small

    assert ratio("naive", 32) == pytest.approx(4, rel=0.01) and ratio("flash", 32) == pytest.approx(4, rel=0.01)
    naive = roofline.attention_traffic("naive", 1, 8192, 64)
    assert roofline.attention_traffic("flash", 1, 8192, 64, block_q=128) < naive / 3  # 2d/128 = 1 against 4
    assert roofline.attention_traffic("flash", 1, 8192, 64, block_q=16) > naive  # 2d/16 = 8 against 4
    with pytest.raises(ValueError, match="algorithm"):
        roofline.attention_traffic("paged", 1, 8, 8)
    with pytest.raises(ValueError, match="block_q"):
        roofline.attention_traffic("flash", 1, 8, 8, block_q=0)
