"""`common.engine`: Model, Runtime, Codec and the Engine that composes them."""

from common.engine.codec import ClassificationCodec, Codec, InvalidRequest, Prediction, RequestTooLarge
from common.engine.engine import Engine, EngineClosed, build_engine
from common.engine.model import Model, TensorSpec
from common.engine.runtime import Runtime, create_runtime, register_runtime, runtimes
from common.engine.wrappers import CachedRuntime, TimedRuntime

__all__ = [
    "CachedRuntime",
    "ClassificationCodec",
    "Codec",
    "Engine",
    "EngineClosed",
    "InvalidRequest",
    "Model",
    "Prediction",
    "RequestTooLarge",
    "Runtime",
    "TensorSpec",
    "TimedRuntime",
    "build_engine",
    "create_runtime",
    "register_runtime",
    "runtimes",
]
