"""Model registry. A constructor takes (num_classes, input_shape, **kwargs) and returns a module."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdrun.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], kwargs: dict[str, Any]) -> nn.Module:
    return MODELS.build(name, num_classes, tuple(input_shape), **dict(kwargs))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Importing the modules registers their models.
from kdrun.models import mnist1d  # noqa: E402,F401
