"""Models: the registry (kdrun.models.registry) with kdrun's own families, torchvision's and timm's on first use,
and published weights (`build_pretrained`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdrun.core.errors import KdrunError

# Importing the modules registers them (they import kdrun.models.registry, never this package).
from kdrun.models import cifar, cifar_mobile, custom, mnist1d  # noqa: F401
from kdrun.models.registry import MODELS, build_model, count_params, image_channels, model_kwargs, register_model  # noqa: F401

MODELS.register_lazy("tv_", "kdrun.models.torchvision_models", "any torchvision.models classifier")
MODELS.register_lazy("timm_", "kdrun.models.timm_models", "any timm model, with the extra kdrun[timm]")


def build_pretrained(name: str, weights: str, num_classes: int, input_shape: tuple[int, ...],
                     kwargs: dict[str, Any]) -> tuple[nn.Module, Path, str]:
    """The model with its pretrained weights loaded, the weights file, and the family ("torchvision", "timm")."""
    if name.startswith("tv_"):
        from kdrun.models.torchvision_models import pretrained_torchvision

        return (*pretrained_torchvision(name[3:], weights, num_classes, input_shape, kwargs), "torchvision")
    if name.startswith("timm_"):
        from kdrun.models.timm_models import pretrained_timm

        return (*pretrained_timm(name[5:], weights, num_classes, input_shape, kwargs), "timm")
    raise KdrunError(f"teacher.weights needs a tv_<name> or timm_<name> teacher (got '{name}'); e.g. teacher=tv "
                     "teacher.name=tv_resnet50 teacher.weights=IMAGENET1K_V2, or drop teacher.weights")
