"""Precision as a model transform, and why int8 is still `torch.ao`'s `quantize_dynamic`.

`torch.ao.quantization` warns that it is deprecated in favour of torchao. torchao 0.18's replacement,
`quantize_(model, Int8DynamicActivationInt8WeightConfig())`, imports with torch 2.13 and is more accurate
(per-row scales: cosine to fp32 0.99 on MiniLM against 0.90), but in eager mode its linear layer calls
`torch._int_mm`, and on a CPU without AVX512-VNNI ATen's `_int_mm_out_cpu` is a scalar triple loop
(oneDNN is used only `if (... at::cpu::is_avx512_vnni_supported())`): MiniLM took 26 s a batch of 32 against
0.65 s with `quantize_dynamic` on this AVX2 host. The second test pins that reason, so it fails once the
move is worth making (see modules/00_design/README.md).
"""

import warnings

import pytest
import torch
from torch import nn

from common import bench
from common.device import Device, cpu_flags
from common.engine.precision import apply_precision

CPU = Device("cpu")


@pytest.fixture
def one_thread():
    """Compare kernels, not how threads share a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_int8_is_dynamic_quantisation_of_every_linear():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    quantised = apply_precision(model, "int8", CPU)
    linears = [m for m in quantised.modules() if type(m).__name__ == "Linear"]
    assert [type(m).__module__ for m in linears] == ["torch.ao.nn.quantized.dynamic.modules.linear"] * 2
    x = torch.randn(16, 32)
    with torch.inference_mode():
        got, want = quantised(x), model(x)
    assert torch.nn.functional.cosine_similarity(got, want, dim=1).min() > 0.99


@pytest.mark.skipif(
    "avx512_vnni" in cpu_flags(),
    reason="this CPU has AVX512-VNNI, where torch._int_mm runs in oneDNN; the blocker is CPUs without it",
)
def test_torchao_int8_path_is_still_a_scalar_loop_without_vnni(one_thread):
    """torchao's eager int8 x int8 linear multiplies with `torch._int_mm`; quantize_dynamic with fbgemm.

    When this fails, `torch._int_mm` has a fast kernel on CPUs without AVX512-VNNI: move precision 'int8'
    to torchao (`quantize_` with `Int8DynamicActivationInt8WeightConfig`) and delete this test.
    """
    m, k, n = 128, 384, 384  # 128 tokens through a MiniLM projection (hidden size 384)
    a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    b8 = torch.randint(-127, 128, (k, n), dtype=torch.int8)
    x = torch.randn(m, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(k, n)), {nn.Linear}, torch.qint8)
    ratio = bench.compare(lambda: torch._int_mm(a8, b8), lambda: dynamic(x), repeat=5).speedup
    # measured 100x at 1024 tokens on Zen 2 (AVX2); 10x leaves room for any CPU and a busy machine
    assert ratio > 10, f"torch._int_mm took only {ratio:.1f}x quantize_dynamic's linear: time to move to torchao"
