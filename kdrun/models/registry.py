"""The model registry and what every family uses: a constructor takes (num_classes, input_shape, **kwargs)
and returns a module."""



from __future__ import annotations

from typing import Any

from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.core.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], kwargs: dict[str, Any]) -> nn.Module:
    return MODELS.build(name, num_classes, tuple(input_shape), **dict(kwargs))


def model_kwargs(spec: Any) -> dict[str, Any]:
    """A model config's constructor options as plain data (they go into checkpoints): its kwargs,
    plus the import path for `custom` models (`target`)."""
    from omegaconf import OmegaConf

    kwargs = OmegaConf.to_container(spec.kwargs, resolve=True)
    return {**kwargs, "target": spec.target} if spec.get("target") else kwargs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def image_channels(input_shape: tuple[int, ...]) -> int:
    """The channel count of an image input; 2-D convolutional nets refuse anything else in one line."""
    if len(input_shape) != 3:
        raise KdrunError(f"this model needs images shaped (channels, height, width), but the dataset gives "
                         f"{tuple(input_shape)}; pick an image dataset or a model for this input")
    return input_shape[0]
