"""Networks for 1-D signals such as MNIST-1D (inputs shaped (N, channels, length))."""

from __future__ import annotations

import math

from torch import nn

from kdrun.models.registry import register_model


def named_stages(model: nn.Sequential, stages: list[str]) -> nn.Sequential:
    """Declare the stages (kdrun.models.stages) of a Sequential on the instance: its state_dict keys
    stay the plain indices stored teachers have. `stages` names the ReLUs, shallow to deep."""
    relus = [str(i) for i, m in enumerate(model) if isinstance(m, nn.ReLU)]
    model.stage_modules = dict(zip(stages, relus))
    model.classifier_module = str(len(model) - 1)
    return model


@register_model("cnn1d")
def cnn1d(num_classes: int, input_shape: tuple[int, ...], channels: int = 64, layers: int = 3) -> nn.Module:
    """Strided 1-D convolutions then a linear layer, after Greydanus's MNIST-1D CNN."""
    in_channels, length = input_shape
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Conv1d(in_channels if i == 0 else channels, channels, 5, stride=2, padding=2),
                   nn.BatchNorm1d(channels), nn.ReLU(inplace=True)]
        length = math.ceil(length / 2)
    model = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(channels * length, num_classes))
    return named_stages(model, [f"stage{i + 1}" for i in range(layers)])


@register_model("mlp")
def mlp(num_classes: int, input_shape: tuple[int, ...], hidden: list[int] = (100, 100), dropout: float = 0.0) -> nn.Module:
    """A plain fully connected net on the flattened input."""
    width = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        width = size
    return named_stages(nn.Sequential(*layers, nn.Linear(width, num_classes)),
                        [f"hidden{i + 1}" for i in range(len(hidden))])
