import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bench import leak_check
from common.engine import (
    CachedRuntime,
    ClassificationCodec,
    Engine,
    EngineClosed,
    InvalidRequest,
    Runtime,
    TensorSpec,
    TimedRuntime,
    build_engine,
    create_runtime,
    register_runtime,
    runtimes,
    zoo,
)

MODEL = zoo.mlp_classifier(features=16, hidden=32, classes=4)
LABELS = ("a", "b", "c", "d")
CODEC = ClassificationCodec(16, LABELS)


def requests(n: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, 16)).tolist()


class StubRuntime:
    """A NumPy-only runtime: the engine must work with anything of this shape."""

    name = "stub"
    device = "cpu"

    def __init__(self, model=MODEL):
        self.model = model
        self.calls = 0
        self.closed = 0

    def run(self, inputs):
        self.calls += 1
        x = inputs["features"]
        return {"logits": x[:, :4] * 10.0}

    def close(self):
        self.closed += 1


# --- model and specs -------------------------------------------------------


def test_tensor_spec_names_what_is_wrong():
    spec = TensorSpec("features", (None, 16))
    spec.check(np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match=r"'features': expected dtype float32, got float64"):
        spec.check(np.zeros((3, 16)))
    with pytest.raises(ValueError, match=r"expected shape \(batch, 16\), got \(3, 15\)"):
        spec.check(np.zeros((3, 15), np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        spec.check([[0.0] * 16])


def test_model_checks_inputs():
    ok = MODEL.example_inputs(batch=3)
    assert MODEL.check_inputs(ok) == 3
    with pytest.raises(ValueError, match=r"missing \['features'\], unexpected \['x'\]"):
        MODEL.check_inputs({"x": ok["features"]})
    with pytest.raises(ValueError, match="empty batch"):
        MODEL.check_inputs({"features": np.zeros((0, 16), np.float32)})


def test_zoo_models_are_deterministic_and_leave_the_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = zoo.mlp_classifier(seed=1).build()
    assert torch.equal(torch.rand(1), before), "building a model must not consume the caller's RNG"
    b = zoo.mlp_classifier(seed=1).build()
    c = zoo.mlp_classifier(seed=2).build()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    with pytest.raises(ValueError, match="must be >= 1"):
        zoo.mlp_classifier(hidden=0)


# --- registry and runtimes -------------------------------------------------


def test_registry_lists_runtimes_and_rejects_unknown_names():
    assert {"torch-eager", "torch-compile"} <= set(runtimes())
    with pytest.raises(ValueError, match=r"unknown runtime 'tensorflow': expected one of \[.*'torch-eager'"):
        create_runtime("tensorflow", MODEL)
    with pytest.raises(ValueError, match="already registered"):
        register_runtime("torch-eager", "somewhere:Else")


def test_eager_runtime_matches_the_module_and_checks_inputs():
    rt = create_runtime("torch-eager", MODEL, device="cpu")
    assert isinstance(rt, Runtime)
    x = MODEL.example_inputs(batch=5)
    out = rt.run(x)
    with torch.inference_mode():
        ref = MODEL.build()(torch.from_numpy(x["features"])).numpy()
    np.testing.assert_allclose(out["logits"], ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="dtype"):
        rt.run({"features": x["features"].astype(np.float64)})
    rt.close()
    rt.close()
    with pytest.raises(RuntimeError, match="closed"):
        rt.run(x)


@pytest.mark.slow
def test_compiled_runtime_gives_the_eager_outputs():
    eager = create_runtime("torch-eager", MODEL)
    compiled = create_runtime("torch-compile", MODEL)
    for batch in (1, 7, 32):  # dynamic batch: one compile serves every size
        x = MODEL.example_inputs(batch=batch, seed=batch)
        np.testing.assert_allclose(compiled.run(x)["logits"], eager.run(x)["logits"], rtol=1e-4, atol=1e-5)
    assert compiled.name == "torch-compile"


# --- codec -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([[0.0] * 15], "request 0: expected 16 features, got 15"),
        ([[0.0] * 16, ["x"] * 16], "request 1: features must all be numbers"),
        ([[0.0] * 16, [float("nan")] * 16], "request 1: features must be finite"),
        (["abc"], "request 0: expected a list of 16 numbers, got str"),
        ([None], "request 0: expected a list of 16 numbers, got NoneType"),
    ],
)
def test_codec_rejects_bad_requests_by_index(batch, message):
    with pytest.raises(InvalidRequest, match=message):
        CODEC.encode(batch)


def test_codec_rejects_empty_and_non_sequence_batches():
    with pytest.raises(ValueError, match="empty batch"):
        CODEC.encode([])
    with pytest.raises(TypeError, match="sequence of feature vectors"):
        CODEC.encode("not a batch")


def test_codec_takes_a_2d_array_batch_like_a_list():
    x = np.random.default_rng(0).standard_normal((3, 16))
    np.testing.assert_array_equal(CODEC.encode(x)["features"], CODEC.encode(x.tolist())["features"])
    with pytest.raises(TypeError, match=r"2-D array \(batch, 16\), got shape \(16,\)"):
        CODEC.encode(x[0])


def test_codec_decodes_probabilities():
    logits = np.array([[0.0, 0.0, 0.0, 10.0], [5.0, 0.0, 0.0, 0.0]], np.float32)
    preds = CODEC.decode({"logits": logits})
    assert [p.label for p in preds] == ["d", "a"]
    assert preds[0].probability == pytest.approx(np.exp(10) / (np.exp(10) + 3), rel=1e-6)
    with pytest.raises(ValueError, match="4 labels"):
        CODEC.decode({"logits": np.zeros((1, 3), np.float32)})


# --- engine ----------------------------------------------------------------


def test_engine_depends_on_the_protocol_not_on_torch():
    code = (
        "import sys\n"
        "from common.engine import Engine, ClassificationCodec, Model, TensorSpec\n"
        "class R:\n"
        "    name, device = 'stub', 'cpu'\n"
        "    model = Model('m', None, (TensorSpec('features', (None, 2)),), (TensorSpec('logits', (None, 2)),))\n"
        "    def run(self, inputs): return {'logits': inputs['features']}\n"
        "    def close(self): pass\n"
        "with Engine(R(), ClassificationCodec(2, ('no', 'yes'))) as e:\n"
        "    assert [p.label for p in e.infer([[0.0, 1.0]])] == ['yes']\n"
        "assert 'torch' not in sys.modules, 'common.engine imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_lifecycle():
    stub = StubRuntime()
    engine = Engine(stub, CODEC, warmup=3)
    with pytest.raises(EngineClosed, match="not started"):
        engine.infer(requests(1))
    with engine:
        assert stub.calls == 3, "start() warms the runtime up"
        assert engine.warmup_seconds is not None
        assert engine.start() is engine and stub.calls == 3, "a second start() is a no-op"
        assert len(engine.infer(requests(2))) == 2
    assert engine.closed and stub.closed == 1
    engine.close()
    assert stub.closed == 1, "close() is idempotent"
    with pytest.raises(EngineClosed, match="is closed"):
        engine.infer(requests(1))
    with pytest.raises(EngineClosed, match="is closed"):
        engine.start()


def test_close_finishes_queued_work_and_stops_the_threads():
    threads_before = threading.active_count()
    engine = build_engine(MODEL, CODEC, workers=2).start()
    futures = [engine.submit(requests(4, seed=i)) for i in range(20)]
    engine.close()
    assert all(len(f.result(timeout=0)) == 4 for f in futures)
    assert threading.active_count() == threads_before


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="workers >= 1"):
        Engine(StubRuntime(), CODEC, workers=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=16, max_size=16), min_size=1, max_size=9))
def test_engine_results_match_the_module_request_by_request(batch):
    module = MODEL.build()
    with torch.inference_mode():
        probs = torch.softmax(module(torch.tensor(batch, dtype=torch.float32)), dim=1)
    with build_engine(MODEL, CODEC, warmup=0) as engine:
        preds = engine.infer(batch)
    assert len(preds) == len(batch)
    for pred, p in zip(preds, probs, strict=True):
        assert pred.probability == pytest.approx(float(p.max()), rel=1e-4, abs=1e-6)
        assert float(p[LABELS.index(pred.label)]) == pytest.approx(float(p.max()), rel=1e-4, abs=1e-6)


def test_thousand_open_close_cycles_leak_nothing():
    reqs = requests(4)

    def cycle():
        with build_engine(MODEL, CODEC) as engine:
            engine.submit(reqs).result()

    report = leak_check(cycle, cycles=1000)
    assert report.thread_growth == 0, report.row()
    assert report.rss_growth_bytes < 16 * 2**20, report.row()


# --- composition -----------------------------------------------------------


def test_wrappers_are_runtimes_and_stack():
    timed = TimedRuntime(StubRuntime())
    cached = CachedRuntime(timed, maxsize=2)
    assert isinstance(timed, Runtime) and isinstance(cached, Runtime)
    assert cached.model is MODEL and cached.name == "stub"
    x = MODEL.example_inputs(batch=2, seed=0)
    y = MODEL.example_inputs(batch=2, seed=1)
    first = cached.run(x)
    first["logits"][:] = 0  # a caller mutating its result must not corrupt the cache
    again = cached.run(x)
    assert not np.all(again["logits"] == 0)
    assert (cached.hits, cached.misses, timed.calls) == (1, 1, 1)
    cached.run(y)
    cached.run(MODEL.example_inputs(batch=2, seed=2))  # evicts x (least recently used)
    cached.run(x)
    assert (cached.hits, cached.misses) == (1, 4)
    assert len(timed.timing().seconds) == timed.calls == cached.misses, "one sample per call that got past the cache"
    cached.close()
    assert timed.inner.closed == 1


def test_timed_runtime_records_the_wall_time_of_each_call():
    class Sleepy(StubRuntime):
        def run(self, inputs):
            time.sleep(0.02)
            return super().run(inputs)

    timed = TimedRuntime(Sleepy(), keep=2)
    for seed in range(3):
        timed.run(MODEL.example_inputs(batch=1, seed=seed))
    assert len(timed.timing().seconds) == 2, "only the last `keep` calls"
    assert min(timed.timing().seconds) >= 0.02, "a sample covers the call it times (time.sleep waits at least that)"


def test_cache_key_distinguishes_shape_and_dtype():
    a = {"features": np.zeros((2, 8), np.float32)}
    b = {"features": np.zeros((4, 4), np.float32)}
    c = {"features": np.zeros((2, 4), np.float64)}
    keys = {CachedRuntime._key(v) for v in (a, b, c)}
    assert len(keys) == 3


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_runs_on_the_cpu_close_to_fp32(precision):
    x = MODEL.example_inputs(batch=8)
    ref = create_runtime("torch-eager", MODEL, device="cpu").run(x)["logits"]
    out = create_runtime("torch-eager", MODEL, device="cpu", precision=precision).run(x)["logits"]
    assert out.dtype == np.float32, "outputs leave in float32 whatever the compute precision"
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 1e-3
    assert not np.array_equal(out, ref), f"{precision} should not be bit-identical to fp32"


def test_precision_that_cannot_run_here_is_refused():
    with pytest.raises(
        ValueError, match=r"unknown precision 'fp8': expected one of \['fp32', 'bf16', 'fp16', 'int8'\]"
    ):
        create_runtime("torch-eager", MODEL, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="'fp16' needs a GPU"):
        create_runtime("torch-eager", MODEL, device="cpu", precision="fp16")
