"""Triton kernels at tiny sizes and small blocks, so every loop runs several tiles with ragged edges.

Without a GPU they run on Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which is slow: shapes stay in the tens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.device import cuda_available
from common.kernels import reference
from common.kernels.registry import status
from tests.kernels.tolerances import tolerance

if status("triton") is not None:
    pytest.skip(f"the triton backend {status('triton')}", allow_module_level=True)

from common.kernels.backends import triton_ops  # only once triton can run

DEVICE = "cuda" if cuda_available() else "cpu"
FEW = settings(max_examples=30, deadline=None)


def arrays(seed: int, *shapes: tuple[int, ...], magnitude: float = 1.0) -> list[np.ndarray]:
    """float32 normal arrays (never zeros)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * magnitude).astype(np.float32) for s in shapes]


def run(fn, *xs: np.ndarray, **options) -> np.ndarray:
    return fn(*(torch.from_numpy(x).to(DEVICE) for x in xs), **options).cpu().numpy()


def assert_close(got: np.ndarray, want: np.ndarray, reduction: int = 1) -> None:
    rtol, atol = tolerance("float32", reduction)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@FEW
@given(
    lead=st.lists(st.integers(1, 2), max_size=2),
    seq_q=st.integers(1, 40),
    seq_k=st.integers(1, 40),
    d=st.integers(1, 20),
    dv=st.integers(1, 20),
    causal=st.booleans(),
    algorithm=st.sampled_from(["naive", "flash"]),
    blocks=st.sampled_from([(16, 16), (16, 32), (32, 16)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_attention(lead, seq_q, seq_k, d, dv, causal, algorithm, blocks, seed):
    q, k, v = arrays(seed, (*lead, seq_q, d), (*lead, seq_k, d), (*lead, seq_k, dv))
    got = run(triton_ops.attention, q, k, v, causal=causal, algorithm=algorithm, blocks=blocks)
    assert got.shape == (*lead, seq_q, dv)
    assert_close(got, reference.attention(q, k, v, causal=causal), seq_k * d)


def test_flash_attention_with_large_scores_and_a_scale():
    """Scores in the hundreds: the online softmax keeps them finite; an explicit scale is honoured."""
    q, k, v = arrays(1, (2, 40, 16), (2, 50, 16), (2, 50, 16), magnitude=6.0)
    for algorithm in ("naive", "flash"):
        got = run(triton_ops.attention, q, k, v, causal=True, algorithm=algorithm, scale=0.5, blocks=(16, 16))
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, reference.attention(q, k, v, causal=True, scale=0.5), rtol=1e-3, atol=1e-3)


@FEW
@given(m=st.integers(1, 50), k=st.integers(1, 50), n=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_matmul_ragged_edges(m, k, n, seed):
    a, b = arrays(seed, (m, k), (k, n))
    assert_close(run(triton_ops.matmul, a, b, blocks=(16, 16, 16)), reference.matmul(a, b), k)


def test_matmul_default_blocks():
    a, b = arrays(2, (70, 45), (45, 33))
    assert_close(run(triton_ops.matmul, a, b), reference.matmul(a, b), 45)


@FEW
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    magnitude=st.sampled_from([1.0, 100.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_softmax(shape, magnitude, seed):
    """Rows of any length (masked up to a power of two); large values do not overflow."""
    (x,) = arrays(seed, tuple(shape), magnitude=magnitude)
    assert_close(run(triton_ops.softmax, x), reference.softmax(x))


@FEW
@given(rows=st.integers(1, 6), n=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_layernorm(rows, n, seed):
    x, w, b = arrays(seed, (rows, n), (n,), (n,))
    x += 3.0  # a mean far from 0, so a wrong (uncentred) variance would show
    assert_close(run(triton_ops.layernorm, x, w, b, eps=1e-5), reference.layernorm(x, w, b, eps=1e-5), n)


@FEW
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    approximate=st.sampled_from(["none", "tanh"]),
    magnitude=st.sampled_from([1.0, 20.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_gelu_and_bias_gelu(shape, approximate, magnitude, seed):
    """Elementwise over blocks of 64 (several blocks, a ragged last one); the bias repeats along the last axis."""
    x, b = arrays(seed, tuple(shape), (shape[-1],), magnitude=magnitude)
    assert_close(run(triton_ops.gelu, x, approximate=approximate, block=64), reference.gelu(x, approximate))
    got = run(triton_ops.bias_gelu, x, b, approximate=approximate, block=64)
    assert_close(got, reference.bias_gelu(x, b, approximate))


def test_bad_input_is_refused_with_the_reason():
    x, w = (torch.from_numpy(a).to(DEVICE) for a in arrays(3, (4, 8), (8,)))
    with pytest.raises(ValueError, match="float32"):
        triton_ops.softmax(x.double())
    with pytest.raises(ValueError, match="approximate"):
        triton_ops.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="algorithm"):
        triton_ops.attention(x, x, x, algorithm="fast")
    with pytest.raises(ValueError, match="same sequence length"):
        triton_ops.attention(x, x, x[:3])
    with pytest.raises(ValueError, match="matmul takes"):
        triton_ops.matmul(x, w[None])


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_ops, "INTERPRETED", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        triton_ops.softmax(torch.ones(2, 3))
