"""Teachers with published weights: torchvision's weights API (`tv_<name>`, `teacher.weights=IMAGENET1K_V2`)
and timm's (`timm_<name>`, `teacher.weights=pretrained`, the optional extra `kdrun[timm]`).

Such a model is the publisher's own architecture (no stem adapted to small inputs: the weights
fit the original one) with the publisher's number of classes, which must be the dataset's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdrun.core.errors import KdrunError


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


def check_pretrained_fits(model_name: str, classes: int, num_classes: int, input_shape: tuple[int, ...]) -> None:
    """The weights' classes must be the dataset's, and the inputs RGB images."""
    if classes != num_classes:
        raise KdrunError(f"{model_name} predicts {classes} classes but the dataset has {num_classes}; use it on a "
                         f"dataset with its {classes} classes (e.g. ImageNet), or train a teacher for this one")
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise KdrunError(f"{model_name} takes RGB images (3, height, width) but the dataset gives "
                         f"{tuple(input_shape)}; pick an RGB image dataset")
