"""`custom`: a model of your own, named by an import path (`teacher.target=my_pkg.nets:build_teacher`).

The target is a function (or class) returning an nn.Module, called like Hydra's `_target_`
with the config's `kwargs`; it also gets `num_classes` and `input_shape` when its signature
asks for them. One forward pass on a blank input checks that it returns `num_classes` logits,
so a wrong model fails here in one line rather than at the first batch.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch
from torch import nn

from kdrun.core.errors import KdrunError, first_line
from kdrun.models.registry import register_model


def import_target(target: str) -> Callable[..., Any]:
    """`package.module:attribute` (or `package.module.attribute`) -> the attribute."""
    module_name, _, attribute = target.partition(":") if ":" in target else target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute) if module_name and attribute else None
    except Exception as error:  # noqa: BLE001 - the user's module failed to load (missing, SyntaxError, ...)
        raise KdrunError(f"cannot import target '{target}' ({type(error).__name__}: {first_line(error)}); give "
                         "module:function, with the module on PYTHONPATH") from None
    if not callable(found):
        raise KdrunError(f"target '{target}' is not a function or class; give module:function returning an nn.Module")
    return found


@register_model("custom")
def custom(num_classes: int, input_shape: tuple[int, ...], target: str = "", **kwargs: Any) -> nn.Module:
    builder = import_target(target)
    wanted = inspect.signature(builder).parameters
    given = {name: value for name, value in (("num_classes", num_classes), ("input_shape", tuple(input_shape)))
             if name in wanted}
    try:
        model = builder(**given, **kwargs)
    except TypeError as error:
        raise KdrunError(f"target '{target}' cannot be called with {sorted({**given, **kwargs})} ({error}); "
                         "set its options with kwargs.NAME=VALUE") from None
    if not isinstance(model, nn.Module):
        raise KdrunError(f"target '{target}' returned a {type(model).__name__}, not an nn.Module")
    _check_output(target, model, num_classes, input_shape)
    return model


def _check_output(target: str, model: nn.Module, num_classes: int, input_shape: tuple[int, ...]) -> None:
    training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as error:
        raise KdrunError(f"the model from '{target}' cannot take inputs shaped {tuple(input_shape)} "
                         f"({str(error).strip().splitlines()[0][:120]})") from None
    finally:
        model.train(training)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, num_classes):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise KdrunError(f"the model from '{target}' returns {shape} for a batch of 2, but the dataset needs "
                         f"(2, {num_classes}) logits; make it return one logit per class")
