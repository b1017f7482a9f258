"""Quantization-aware training: the student's Linear and Conv layers computed as INT8 would compute them.

The simulated scheme is the one kdrun's INT8 export uses (kdrun.deploy.quantize): weights int8
symmetric per output channel, the layer's input activations uint8 per tensor over a moving min/max
(momentum 0.01, as torch's MovingAverageMinMaxObserver). Rounding uses torch's fake_quantize ops,
whose gradient is the straight-through estimator. Only the layers' `forward` is replaced (per
instance), so parameter names, checkpoints and the optimiser's state are those of the plain model,
and `detach` gives the plain model back for export, which ONNX Runtime then quantizes with the same
scheme. The activation ranges are not part of `last.pt`: a run resumed inside its QAT epochs starts
them again from the next batch.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
from torch import nn

QUANTIZED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SCHEME = "Linear/Conv weights int8 symmetric per output channel, their inputs uint8 per tensor (moving min/max)"
MOMENTUM = 0.01


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """int8, symmetric, one scale per output channel."""
    scale = weight.detach().abs().flatten(1).amax(1).clamp(min=1e-8) / 127
    zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)


class ActivationRange:
    """The moving min/max of a layer's input (updated in training, fixed in eval), and its uint8 fake quantization."""

    def __init__(self) -> None:
        self.low: Optional[torch.Tensor] = None
        self.high: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training or self.low is None:
            low, high = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)  # the range holds 0
            first = self.low is None
            self.low = low if first else self.low + MOMENTUM * (low - self.low)
            self.high = high if first else self.high + MOMENTUM * (high - self.high)
        scale = ((self.high - self.low) / 255).clamp(min=1e-8).float()
        zero = (-self.low / scale).round().clamp(0, 255).int()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def _quantized_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    inputs = layer.kdrun_activation(x, layer.training)
    weight = fake_quantize_weight(layer.weight)
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(inputs, weight, layer.bias)
    return layer._conv_forward(inputs, weight, layer.bias)


def attach(model: nn.Module) -> int:
    """Fake-quantize every Linear and Conv layer of `model` from now on; how many layers (0: already attached)."""
    count = 0
    for layer in model.modules():
        if isinstance(layer, QUANTIZED) and "forward" not in vars(layer):
            layer.kdrun_activation = ActivationRange()
            layer.forward = types.MethodType(_quantized_forward, layer)
            count += 1
    return count


def detach(model: nn.Module) -> None:
    """The plain float model again (for checkpoints and export)."""
    for layer in model.modules():
        if isinstance(layer, QUANTIZED) and "forward" in vars(layer):
            del layer.forward
            del layer.kdrun_activation


def is_attached(model: nn.Module) -> bool:
    return any("forward" in vars(layer) for layer in model.modules() if isinstance(layer, QUANTIZED))
