"""Models the course builds itself, so nothing is downloaded at run time."""

from __future__ import annotations

import torch
from torch import nn

from common.engine.model import Model, TensorSpec


def _seeded(factory, seed: int):
    def build() -> nn.Module:
        # fork_rng keeps the caller's RNG untouched: building a model has no side effects
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return factory()

    return build


def mlp_classifier(features: int = 64, hidden: int = 256, classes: int = 10, depth: int = 2, seed: int = 0) -> Model:
    """A small MLP classifier: features -> logits. Same seed, same weights."""
    if min(features, hidden, classes, depth) < 1:
        raise ValueError(
            f"features, hidden, classes and depth must be >= 1, got {features}, {hidden}, {classes}, {depth}"
        )

    def factory() -> nn.Module:
        layers: list[nn.Module] = []
        width = features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        return nn.Sequential(*layers)

    return Model(
        name=f"mlp-{features}x{hidden}x{classes}",
        factory=_seeded(factory, seed),
        inputs=(TensorSpec("features", (None, features)),),
        outputs=(TensorSpec("logits", (None, classes)),),
    )
