"""A stub embedding engine for server tests: the real tokenizer, a fake model.

The fake embedding of a text encodes its token count and first token id, so a
test can tell that every request got its own vectors back, in order.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from common.engine import Engine, Model, TensorSpec
from common.engine.embedding import EmbeddingCodec

DIM = 8
MODEL = Model(
    "stub-embedder",
    factory=lambda: None,
    inputs=(TensorSpec("input_ids", (None, None), "int64"), TensorSpec("attention_mask", (None, None), "int64")),
    outputs=(TensorSpec("embedding", (None, DIM)),),
)


class StubEmbeddingRuntime:
    name = "stub"
    device = "cpu"
    model = MODEL

    def __init__(
        self,
        seconds_per_batch: float = 0.0,
        hold_warmup: threading.Event | None = None,
        hold: threading.Event | None = None,
    ):
        self.seconds_per_batch = seconds_per_batch
        self.hold_warmup = hold_warmup
        self.hold = hold  # each batch (after the warm-up) waits for it: the model is busy until the test says
        self.running = threading.Event()  # set when a batch has started
        self.batches: list[int] = []
        self.warmups = 0

    def run(self, inputs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if self.warmups < 2:  # Engine.start() runs two warm-up batches
            self.warmups += 1
            if self.hold_warmup is not None:
                self.hold_warmup.wait(10)
        else:
            self.batches.append(len(ids))
            self.running.set()
            if self.hold is not None:
                self.hold.wait(30)
        time.sleep(self.seconds_per_batch)
        out = np.zeros((len(ids), DIM), np.float32)
        out[:, 0] = mask.sum(axis=1)
        out[:, 1] = ids[:, 1]
        return {"embedding": out}

    def close(self):
        pass


def stub_engine(**kwargs) -> Engine:
    return Engine(StubEmbeddingRuntime(**kwargs), EmbeddingCodec.from_folder(max_tokens=256))
