"""The training loop: plain modules, tensors and numbers in, per-epoch metrics out.

It never reads Hydra state, so tests and other tools can call it directly. Batches are
indexed from tensors already on the device. The frozen teacher's logits come from a cache
computed once when the dataset has no random augmentation; with augmentation the teacher
sees the same augmented batch as the student ("consistent teaching", Beyer et al. 2022).
The loop keeps running sums on the device and syncs with the host once per epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from kdrun.data import TensorData
from kdrun.errors import KdrunError
from kdrun.losses import Loss, LossParts, cross_entropy
from kdrun.runtime import memory_format


class StepProgress(Protocol):
    def start_epoch(self, epoch: int, steps: int) -> None: ...
    def advance(self) -> None: ...


@dataclass(frozen=True)
class Recipe:
    """Plain values that say how to train, independent of any config system."""

    epochs: int
    batch_size: int
    optimizer: str = "adamw"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    compile: bool = False


def make_optimizer(model: nn.Module, recipe: Recipe) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and a per-epoch learning-rate schedule."""
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    elif recipe.schedule == "multistep":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return optimizer, scheduler


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; full precision elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for `x` in eval and inference mode, as an ordinary (autograd-usable) tensor."""
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(x.device):
        logits = torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits.clone()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x).argmax(1) == y).float().mean().item()


class TeacherTargets:
    """The frozen teacher's logits for a training batch: cached by index, or computed live.

    The cache is keyed by sample index, which is only correct when the student sees the
    un-augmented sample; with augmentation the teacher runs on the augmented batch.
    """

    def __init__(self, teacher: nn.Module, data: TensorData) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.cache = predict(teacher, data.x_train) if data.augment is None else None

    def __call__(self, index: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.cache[index] if self.cache is not None else predict(self.teacher, inputs, len(inputs))


def fit(model: nn.Module, data: TensorData, recipe: Recipe, device: torch.device, *,
        loss: Loss = cross_entropy, teacher: Optional[nn.Module] = None,
        on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
        progress: Optional[StepProgress] = None) -> list[dict[str, float]]:
    """Train `model` on `data` (already on `device`) by `loss`, fed the frozen teacher's logits if given.

    Returns one metrics dict per epoch: epoch, train_loss, test_acc, lr, seconds (+ ce, kd with a teacher).
    """
    model.to(device, memory_format=memory_format(device, data.x_train.dim())).train()
    forward = torch.compile(model) if recipe.compile else model
    targets = TeacherTargets(teacher, data) if teacher is not None else None
    optimizer, scheduler = make_optimizer(model, recipe)
    order = torch.Generator().manual_seed(recipe.seed)
    augment_rng = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    n, history = len(data.x_train), []
    steps = math.ceil(n / recipe.batch_size)
    for epoch in range(1, recipe.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        sums = torch.zeros(3, device=device)
        if progress:
            progress.start_epoch(epoch, steps)
        for index in torch.randperm(n, generator=order).to(device).split(recipe.batch_size):
            inputs, labels = data.x_train[index], data.y_train[index]
            if data.augment is not None:
                inputs = data.augment(inputs, augment_rng)
            with autocast(device):
                logits = forward(inputs).float()
            parts = loss(logits, labels, targets(index, inputs) if targets else None)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            sums += torch.stack([p.detach() for p in parts]) * len(index)
            if progress:
                progress.advance()
        scheduler.step()
        train_loss, ce, kd = (sums / n).tolist()
        if not math.isfinite(train_loss):
            raise KdrunError(f"training loss became {train_loss} in epoch {epoch}; lower the learning rate "
                             f"(e.g. optim.lr={recipe.lr / 10:g})")
        row = {"epoch": epoch, "train_loss": train_loss, **({"ce": ce, "kd": kd} if targets else {}),
               "test_acc": accuracy(model, data.x_test, data.y_test), "lr": lr,
               "seconds": time.perf_counter() - started}
        history.append(row)
        if on_epoch:
            on_epoch(row)
    return history
