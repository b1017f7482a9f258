"""Each model's own view of the one sample stream: its input size and normalisation.

The dataset yields one stream of batches (its own size and normalisation). A teacher pretrained
at 224x224 with ImageNet's mean/std and a student trained at 32x32 on CIFAR's both read it: each
model carries a `View`, a forward pre-hook that resizes the batch to the model's side and
renormalises it from the stream's mean/std to the model's. A pre-hook, not a wrapper module: the
model's state_dict, stage names and every caller (training, evaluation, latency, teacher logits)
stay as they are, and the view runs wherever the model runs (on the device, once per batch).

A view comes from the model's config (`student.view.size=32`, `teacher.view.mean=[0.5,0.5,0.5]`),
else from the pretrained config of published weights (timm's data config: input size, mean, std),
else it is the stream's own (no resize, no renormalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.core.errors import KdrunError

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel


@dataclass(frozen=True)
class View:
    """Resize to `size` (None: keep the stream's), then map the stream's normalisation to (`mean`, `std`)."""

    size: Optional[tuple[int, int]] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    stream_mean: Optional[tuple[float, ...]] = None  # None: the stream's values are taken as they are
    stream_std: Optional[tuple[float, ...]] = None
    source: str = "dataset"  # where size and normalisation came from: dataset, config, pretrained

    @property
    def identity(self) -> bool:
        return self.size is None and self.mean is None

    def input_shape(self, stream_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The input shape the model is built for."""
        return stream_shape if self.size is None else (stream_shape[0], *self.size)

    def affine(self, channels: int) -> tuple[list[float], list[float]]:
        """Per-channel (scale, shift) with model_input = stream_input * scale + shift."""
        s_mean = self.stream_mean or (0.0,) * channels
        s_std = self.stream_std or (1.0,) * channels
        return ([s / m for s, m in zip(s_std, self.std)],
                [(sm - mm) / m for sm, mm, m in zip(s_mean, self.mean, self.std)])

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size[-1])
        if self.mean is not None:
            scale, shift = self.affine(x.shape[1])
            x = x * x.new_tensor(scale).view(1, -1, 1, 1) + x.new_tensor(shift).view(1, -1, 1, 1)
        return (x, *args[1:])

    def describe(self, stream_shape: tuple[int, ...]) -> dict[str, Any]:
        """What summary.json and the log say about this view."""
        return {"input_shape": list(self.input_shape(stream_shape)), "resized": self.size is not None,
                "mean": list(self.mean) if self.mean else list(self.stream_mean or []) or None,
                "std": list(self.std) if self.std else list(self.stream_std or []) or None,
                "source": self.source}


def resolve_view(spec: Any, stream_shape: tuple[int, ...], stream_norm: Optional[Normalisation],
                 pretrained: Optional[dict[str, Any]] = None) -> View:
    """The view a model config asks for (`spec`: size, mean, std; null = not set), else its pretrained
    config's (`pretrained`: timm's data config), else the stream's. One line if it cannot be built."""
    size = spec.get("size") if spec is not None else None
    mean = spec.get("mean") if spec is not None else None
    std = spec.get("std") if spec is not None else None
    source = "config" if (size or mean) else "dataset"
    if pretrained and not (size or mean):
        size, mean, std, source = pretrained["input_size"][-1], pretrained["mean"], pretrained["std"], "pretrained"
    if size is None and mean is None and std is None:
        return View(stream_mean=_tuple(stream_norm[0]) if stream_norm else None,
                    stream_std=_tuple(stream_norm[1]) if stream_norm else None)
    if len(stream_shape) != 3:
        raise KdrunError(f"a view resizes and normalises images, but the dataset gives inputs shaped "
                         f"{tuple(stream_shape)}; drop the model's view.* settings or pick an image dataset")
    if (mean is None) != (std is None):
        raise KdrunError("view.mean and view.std are set together (one value per channel each), e.g. "
                         "view.mean=[0.5,0.5,0.5] view.std=[0.5,0.5,0.5]")
    channels = stream_shape[0]
    if mean is not None and not (len(mean) == len(std) == channels and all(s > 0 for s in std)):
        raise KdrunError(f"view.mean and view.std need {channels} values each (the dataset's channels), std > 0 "
                         f"(got {list(mean)} and {list(std)})")
    if size is not None and int(size) < 1:
        raise KdrunError(f"view.size must be >= 1 pixels (got {size})")
    return View(size=None if size is None else (int(size), int(size)),
                mean=None if mean is None else _tuple(mean), std=None if std is None else _tuple(std),
                stream_mean=_tuple(stream_norm[0]) if stream_norm else None,
                stream_std=_tuple(stream_norm[1]) if stream_norm else None, source=source)


def attach_view(model: nn.Module, view: View) -> nn.Module:
    """Make `model` see its view on every forward pass (a no-op view attaches nothing)."""
    model.view = view
    if not view.identity:
        model.register_forward_pre_hook(view)
    return model


def view_settings(spec: Any) -> dict[str, Any]:
    """The view options a model config sets (plain data; empty when it leaves its view to defaults)."""
    if spec is None:
        return {}
    return {key: list(value) if key != "size" else value for key in ("size", "mean", "std")
            if (value := spec.get(key)) is not None}


def pretrained_data_config(model: nn.Module) -> Optional[dict[str, Any]]:
    """Input size, mean and std the published weights were trained with (timm's `pretrained_cfg`); None if
    the model does not say."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not all(key in cfg for key in ("input_size", "mean", "std")):
        return None
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # built for another side (kwargs.img_size)
    return {**cfg, "input_size": (cfg["input_size"][0], *built)} if built else cfg


def stream_normalisation(data: Any) -> Optional[Normalisation]:
    """The (mean, std) the dataset normalised its stream with; None if it declares none (fake, MNIST-1D)."""
    return getattr(data, "normalisation", None)


def view_of(model: nn.Module) -> View:
    return getattr(model, "view", View())


def _tuple(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
