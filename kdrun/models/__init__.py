"""Models: the registry (kdrun.models.registry) with kdrun's own families, torchvision's and timm's on first use,
and published weights (`build_pretrained`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from kdrun.core.errors import KdrunError

# Importing the modules registers them (they import kdrun.models.registry, never this package).
from kdrun.models import cifar, cifar_mobile, custom, mnist1d  # noqa: F401
from kdrun.models.registry import MODELS, build_model, count_params, image_channels, model_kwargs, register_model  # noqa: F401
from kdrun.models.views import Normalisation, attach_view, pretrained_data_config, resolve_view

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


def build_viewed(name: str, num_classes: int, stream_shape: tuple[int, ...], stream_norm: Optional[Normalisation],
                 kwargs: dict[str, Any], view_spec: Any) -> nn.Module:
    """The model built for its own view of the stream (`view_spec`: the config's `view`; kdrun.models.views),
    the view attached."""
    view = resolve_view(view_spec, tuple(stream_shape), stream_norm)
    return attach_view(build_model(name, num_classes, view.input_shape(tuple(stream_shape)), kwargs), view)


def view_pretrained(model: nn.Module, stream_shape: tuple[int, ...], stream_norm: Optional[Normalisation],
                    view_spec: Any) -> nn.Module:
    """Published weights see the view they were trained with (their pretrained config), unless the config sets one."""
    return attach_view(model, resolve_view(view_spec, tuple(stream_shape), stream_norm, pretrained_data_config(model)))
