"""What a method is (`Method`, `Batch`, `MethodContext`, the schemas) and the registry that finds one by name."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from kdrun.core.errors import ConfigError
from kdrun.methods.losses import LossParts
from kdrun.methods.params import PARAMS, parse_params


@dataclass
class Batch:
    """What a method sees each step. Features are filled only for the stages the method asked for."""

    logits: torch.Tensor
    labels: torch.Tensor
    teacher_logits: Optional[torch.Tensor] = None
    index: Optional[torch.Tensor] = None  # sample indices into the training set (CRD's memory bank)
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """A loss with optional trainable parts. Subclasses set the stages they read and implement forward.

    `needs_teacher` false (ce) lets the engine skip the teacher's forward pass.
    """

    student_stages: tuple[str, ...] = ()
    teacher_stages: tuple[str, ...] = ()
    needs_teacher: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 1

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def summary(self) -> dict[str, Any]:
        """Keys this method adds to summary.json."""
        return {}

    def forward(self, batch: Batch) -> LossParts:  # pragma: no cover - abstract
        raise NotImplementedError


class LogitLoss(Method):
    """A logit loss of the (student logits, labels, teacher logits) -> LossParts kind, as a Method."""

    def __init__(self, loss: Callable[..., LossParts], needs_teacher: bool = True) -> None:
        super().__init__()
        self.loss, self.needs_teacher = loss, needs_teacher

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        if hasattr(self.loss, "start_epoch"):
            self.loss.start_epoch(epoch)

    def forward(self, batch: Batch) -> LossParts:
        return self.loss(batch.logits, batch.labels, batch.teacher_logits)


def as_method(loss: Any) -> Method:
    """The engine speaks `Method`; a plain logit loss (KDLoss, cross_entropy) is wrapped."""
    return loss if isinstance(loss, Method) else LogitLoss(loss)


@dataclass
class MethodContext:
    """What a builder may read: the run's top-level T and alpha (None: unset), the models, data facts."""

    T: float
    alpha: Optional[float]
    num_classes: int
    num_train: int
    student: Optional[nn.Module] = None
    teacher: Optional[nn.Module] = None
    sample: Optional[torch.Tensor] = None  # two training inputs, to probe stage shapes
    train_labels: Optional[torch.Tensor] = None  # the training set's labels (CRD draws negatives by class)
    teacher_stats: Any = None  # kdrun.teachers.knowledge.TeacherStats (ls, kd_sim)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type
    build: Callable[[Any, MethodContext], Method]
    needs_teacher: bool


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, params: type, needs_teacher: bool = True) -> Callable:
    """Decorator for a builder `(params, ctx) -> Method`; `params` is the method's schema dataclass."""

    def add(build: Callable[[Any, MethodContext], Method]) -> Callable[[Any, MethodContext], Method]:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        if PARAMS.get(name) is not params:
            raise ValueError(f"method '{name}' registers {params.__name__}, but kdrun.methods.params.PARAMS says "
                             f"{getattr(PARAMS.get(name), '__name__', 'nothing')}")
        METHODS[name] = MethodSpec(name, params, build, needs_teacher)
        return build

    return add


def registered() -> dict[str, MethodSpec]:
    """Every method, by name (their modules imported on first use)."""
    _register_all()
    return METHODS


def method_spec(name: str) -> MethodSpec:
    """The registered method `name`; the method modules register themselves when first asked for."""
    _register_all()
    if name not in METHODS:
        raise ConfigError(f"unknown loss '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(loss: Any, ctx: MethodContext) -> Method:
    """The method for the `loss` config node (name plus its options)."""
    params = parse_params(loss, ctx.alpha)
    return method_spec(params.name).build(params, ctx)


@functools.cache
def _register_all() -> None:
    """Import every method module of this package once (each registers itself here)."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.name.startswith("_") and module.name not in NOT_METHODS:
            importlib.import_module(f"kdrun.methods.{module.name}")


NOT_METHODS = ("base", "losses", "params", "pairs")  # modules of this package that register nothing
