"""Numba attention, naive and flash: equal to the reference, and flash's extra memory flat in N."""

from __future__ import annotations

import functools

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bench import measure_memory
from common.kernels import reference
from common.kernels.backends import numba_attention as na
from tests.kernels.tolerances import tolerance


def qkv(rng, lead, seq_q, seq_k, d, dv, dtype, magnitude=1.0):
    """Random (never zero) q, k, v of the given shapes."""
    q = rng.standard_normal((*lead, seq_q, d)) * magnitude
    k = rng.standard_normal((*lead, seq_k, d)) * magnitude
    v = rng.standard_normal((*lead, seq_k, dv)) + 0.5
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def assert_close(got, want, dtype, reduction):
    rtol, atol = tolerance(np.dtype(dtype).name, reduction)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    seq_q=st.integers(1, 40),
    seq_k=st.integers(1, 40),
    d=st.integers(1, 16),
    dv=st.integers(1, 16),
    causal=st.booleans(),
    algorithm=st.sampled_from(["naive", "flash"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    block_q=st.sampled_from([1, 3, 8, na.BLOCK_Q]),
    block_k=st.sampled_from([1, 5, 16, na.BLOCK_K]),
    scale=st.sampled_from([None, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference(lead, seq_q, seq_k, d, dv, causal, algorithm, dtype, block_q, block_k, scale, seed):
    """Any leading axes, seq 1, odd and unequal lengths, causal, tiles that do not divide the sequence."""
    q, k, v = qkv(np.random.default_rng(seed), lead, seq_q, seq_k, d, dv, dtype)
    got = na.attention(q, k, v, causal, algorithm, scale, block_q=block_q, block_k=block_k)
    want = reference.attention(q, k, v, causal=causal, scale=scale)
    assert got.shape == (*lead, seq_q, dv) and got.dtype == dtype
    assert_close(got, want, dtype, seq_k * d)


@pytest.mark.parametrize("algorithm", ["naive", "flash"])
def test_large_scores_do_not_overflow(algorithm):
    """Scores in the thousands: exp without subtracting the (running) max would be inf, and the output nan."""
    q, k, v = qkv(np.random.default_rng(1), (2,), 50, 70, 8, 8, np.float64, magnitude=30.0)
    got = na.attention(q, k, v, True, algorithm, block_k=16)
    assert np.abs(q @ np.swapaxes(k, -1, -2)).max() > 1000
    assert np.isfinite(got).all()
    assert_close(got, reference.attention(q, k, v, causal=True), np.float64, 70 * 8)


def test_causal_rows_see_only_earlier_keys():
    """Changing keys and values after position i leaves row i alone; the first row is v[0]."""
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, (3,), 20, 20, 8, 4, np.float64)
    k2, v2 = k.copy(), v.copy()
    k2[:, 12:] += rng.standard_normal(k2[:, 12:].shape)
    v2[:, 12:] -= 3.0
    for algorithm in ("naive", "flash"):
        a = na.attention(q, k, v, True, algorithm, block_q=4, block_k=8)
        b = na.attention(q, k2, v2, True, algorithm, block_q=4, block_k=8)
        np.testing.assert_array_equal(a[:, :12], b[:, :12])
        assert not np.allclose(a[:, 12:], b[:, 12:])
        np.testing.assert_allclose(a[:, 0], v[:, 0], rtol=1e-12)


def test_non_contiguous_inputs():
    """A (seq, heads, d) layout viewed as (heads, seq, d) gives the answer of its contiguous copy."""
    rng = np.random.default_rng(3)
    q, k, v = (np.swapaxes(x, 0, 1) for x in qkv(rng, (33,), 4, 4, 8, 8, np.float32))
    assert not q.flags.c_contiguous
    for algorithm in ("naive", "flash"):
        got = na.attention(q, k, v, False, algorithm)
        np.testing.assert_array_equal(got, na.attention(*map(np.ascontiguousarray, (q, k, v)), False, algorithm))


def test_flash_result_does_not_depend_on_the_number_of_workers():
    """Each row's arithmetic is the same whichever worker runs it: bit-identical on 1 thread or all."""
    q, k, v = qkv(np.random.default_rng(4), (2, 3), 45, 60, 16, 16, np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = na.attention(q, k, v, True, "flash", block_q=8, block_k=16)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, na.attention(q, k, v, True, "flash", block_q=8, block_k=16))


def test_extra_memory_naive_grows_like_n_squared_flash_stays_flat():
    """tracemalloc sees every buffer the kernels write (allocated by NumPy in Python): the output plus the workspace."""
    rng = np.random.default_rng(5)
    extra: dict[tuple[str, int], int] = {}
    for n in (128, 256, 512):
        q, k, v = qkv(rng, (2,), n, n, 16, 16, np.float32)
        for algorithm in ("naive", "flash"):
            na.attention(q, k, v, False, algorithm)  # compiled (or loaded from the cache) before measuring
            out, usage = measure_memory(functools.partial(na.attention, q, k, v, False, algorithm))
            extra[algorithm, n] = usage.traced_peak_bytes - out.nbytes
            predicted = na.workspace_bytes(algorithm, 2, n, n, 16, np.float32)
            assert predicted <= extra[algorithm, n] <= predicted + 16 * 1024, (algorithm, n, extra, predicted)
    assert extra["naive", 128] >= 2 * 128 * 128 * 4
    assert extra["naive", 512] / extra["naive", 128] > 0.9 * 16  # 4x the length, 16x the memory
    assert extra["flash", 512] / extra["flash", 128] < 1.1  # flat
    assert extra["flash", 512] < extra["naive", 128] / 10


@pytest.mark.parametrize("block", [1, 3, 4, 100])
def test_online_softmax_trace(block):
    """The running max is the prefix max, the running sum the prefix sum against it, and the end is softmax."""
    x = np.random.default_rng(6).standard_normal(10) * 4
    steps, probs = na.online_softmax_trace(x, block)
    assert len(steps) == -(-10 // block)
    for n, step in enumerate(steps):
        end = min(10, (n + 1) * block)
        assert step["running max m"] == x[:end].max()
        np.testing.assert_allclose(step["running sum l"], np.exp(x[:end] - x[:end].max()).sum(), rtol=1e-12)
    np.testing.assert_allclose(probs, reference.softmax(x), rtol=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v: (q.astype(np.float16), k, v), "float32 or float64"),
        (lambda q, k, v: (q, k.astype(np.float64), v), "share one dtype"),
        (lambda q, k, v: (q, k[..., :3], v), "shapes must be"),
        (lambda q, k, v: (q, k, v[:, :4]), "shapes must be"),
        (lambda q, k, v: (q[0, 0], k, v), "seq, head_dim"),
    ],
)
def test_bad_input_is_refused_with_the_reason(change, message):
    q, k, v = qkv(np.random.default_rng(7), (2,), 5, 6, 4, 4, np.float32)
    with pytest.raises(ValueError, match=message):
        na.attention(*change(q, k, v))


def test_bad_options_are_refused():
    q, k, v = qkv(np.random.default_rng(8), (), 5, 6, 4, 4, np.float32)
    with pytest.raises(ValueError, match="algorithm"):
        na.attention(q, k, v, algorithm="fast")
    with pytest.raises(ValueError, match="block_q"):
        na.attention(q, k, v, algorithm="flash", block_q=0)
