"""Weight-only quantisation kernels: held to a NumPy reference, and the int8 one to torch's own kernel."""

import numpy as np
import pytest
import torch

from common.kernels import quant

RNG = np.random.default_rng(0)
W = RNG.standard_normal((96, 256), dtype=np.float32)


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_int8_kernel_equals_the_dequantised_matmul(rows):
    q, scale = quant.quantize_int8(W)
    x = RNG.standard_normal((rows, 256), dtype=np.float32)
    np.testing.assert_allclose(
        quant.linear_int8(x, q, scale), x @ quant.dequantize_int8(q, scale).T, rtol=1e-5, atol=1e-4
    )
    assert np.all(np.abs(quant.dequantize_int8(q, scale) - W) <= scale[:, None] / 2 + 1e-7)
    assert q.dtype == np.int8 and q.nbytes == W.nbytes // 4


def test_int8_kernel_equals_torchs_weight_int8pack_mm():
    q, scale = quant.quantize_int8(W)
    x = RNG.standard_normal((2, 256), dtype=np.float32)
    theirs = torch.ops.aten._weight_int8pack_mm(torch.from_numpy(x), torch.from_numpy(q), torch.from_numpy(scale))
    np.testing.assert_allclose(quant.linear_int8(x, q, scale), theirs.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("group", quant.INT4_GROUPS)
def test_int4_kernel_equals_the_dequantised_matmul(group):
    packed, scale = quant.quantize_int4(W, group)
    assert packed.shape == (96, 128) and scale.shape == (96, 256 // group)
    x = RNG.standard_normal((4, 256), dtype=np.float32)
    deq = quant.dequantize_int4(packed, scale, group)
    np.testing.assert_allclose(quant.linear_int4(x, packed, scale, group), x @ deq.T, rtol=1e-5, atol=1e-4)
    bound = np.repeat(scale, group, axis=1) / 2 + 1e-6
    assert np.all(np.abs(deq - W) <= bound)


def test_int4_packs_input_j_and_j_plus_half_a_group_into_one_byte():
    w = np.zeros((1, 32), dtype=np.float32)
    w[0, 0], w[0, 16], w[0, 1] = 7.0, -7.0, 3.0  # scale 1: q = 7, -7, 3
    packed, scale = quant.quantize_int4(w, 32)
    assert scale[0, 0] == 1.0
    assert packed[0, 0] == (7 + 8) | ((-7 + 8) << 4) and packed[0, 1] == (3 + 8) | (8 << 4)


def test_zero_rows_and_bad_input():
    q, scale = quant.quantize_int8(np.zeros((2, 8), dtype=np.float32))
    assert not q.any() and (scale == 1).all()
    with pytest.raises(ValueError, match="2-D NumPy array"):
        quant.quantize_int8(np.zeros(8, dtype=np.float32))
    with pytest.raises(ValueError, match=r"group must be one of \(32, 64, 128\) and divide in_features \(48\)"):
        quant.quantize_int4(np.zeros((2, 48), dtype=np.float32), 32)
    with pytest.raises(ValueError, match=r"activations must be \(rows, 256\)"):
        quant.linear_int8(np.zeros((1, 8), dtype=np.float32), *quant.quantize_int8(W))
