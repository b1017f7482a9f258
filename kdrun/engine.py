"""The training loop: plain modules, tensors and numbers in, per-epoch metrics out.

It never reads Hydra state, so tests and other tools can call it directly. Batches are
indexed from tensors already on the device. The frozen teacher's logits come from a cache
computed once when the dataset has no random augmentation; with augmentation the teacher
sees the same augmented batch as the student ("consistent teaching", Beyer et al. 2022).
The loop keeps running sums on the device and syncs with the host once per epoch.

A run can be checkpointed (`Loop.snapshot`) after any step and continued from that snapshot
bitwise-identically on CPU: the snapshot holds every random state the loop draws from.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from kdrun.data import TensorData
from kdrun.errors import Interrupted, KdrunError
from kdrun.losses import Loss, cross_entropy
from kdrun.runtime import memory_format
from kdrun.trainstate import capture_rng, plain_scheduler_state, restore_rng, restore_scheduler


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

    def __init__(self, teacher: nn.Module, data: TensorData, logits: Optional[torch.Tensor] = None) -> None:
        """`logits`: the teacher's logits for `data.x_train` if already known (e.g. from the sweep's cache)."""
        self.teacher = teacher.eval().requires_grad_(False)
        self.cache = None
        if data.augment is None:
            self.cache = logits if logits is not None else predict(teacher, data.x_train)

    def __call__(self, index: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.cache[index] if self.cache is not None else predict(self.teacher, inputs, len(inputs))


@dataclass
class Loop:
    """What a training run carries between steps: everything `last.pt` must hold to continue it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    order: torch.Generator
    augment_rng: torch.Generator
    history: list[dict[str, float]]

    def snapshot(self, step: int = 0, perm: Optional[torch.Tensor] = None, sums: Optional[torch.Tensor] = None,
                 bad_step: Optional[torch.Tensor] = None, seconds: float = 0.0) -> dict[str, Any]:
        """The state after `len(history)` whole epochs plus `step` steps of the next (0: at an epoch boundary)."""
        return {
            "epoch": len(self.history), "step": step, "seconds": seconds,
            "perm": perm, "sums": None if sums is None else sums.cpu(),
            "bad_step": None if bad_step is None else bad_step.cpu(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain_scheduler_state(self.scheduler.state_dict()),
            "scaler": None,  # bf16 autocast needs no GradScaler
            "rng": capture_rng(self.order, self.augment_rng),
            "history": [dict(row) for row in self.history],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot; the random states last, after anything that might draw from them."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_scheduler(self.scheduler, state["scheduler"])
        self.history[:] = [dict(row) for row in state["history"]]
        restore_rng(state["rng"], self.order, self.augment_rng)


def _epoch_start(partial: Optional[dict[str, Any]], order: torch.Generator, n: int,
                 device: torch.device) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """Batch order, first step, running sums and first-bad-step record: fresh, or an interrupted epoch's."""
    if partial:
        return partial["perm"], partial["step"], partial["sums"].to(device), partial["bad_step"].to(device)
    bad_step = torch.zeros((), dtype=torch.long, device=device)  # first non-finite step (1-based), 0 = none
    return torch.randperm(n, generator=order), 0, torch.zeros(3, device=device), bad_step


def _schedule_step(scheduler: Any, resumed_after_last_step: bool) -> None:
    """Advance the LR schedule. Resumed right after an epoch's last step, this process has not called
    optimizer.step() yet and torch warns of a wrong order that did not happen; silence only that."""
    with warnings.catch_warnings():
        if resumed_after_last_step:
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        scheduler.step()


def _checkpoint_due(epoch: int, every: int, epochs: int) -> bool:
    return every > 0 and (epoch % every == 0 or epoch == epochs)


def nonfinite_cause(data: TensorData, recipe: Recipe, first_step: bool, distilling: bool, ce_finite: bool) -> str:
    """The likely cause of a non-finite loss, most specific first: the data, the distillation term (T),
    the model before any update, else the learning rate."""
    if not (torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()):
        return "the training data contains NaN or inf; check the dataset (and dataset.kwargs)"
    if distilling and ce_finite:
        return "the distillation term is not finite while cross-entropy is; check T (try T=4) and the teacher's logits"
    if first_step:
        return ("the very first step, before any update; check the data and the model"
                + ("'s teacher and T" if distilling else ""))
    return (f"lower the learning rate (it is optim.lr={recipe.lr:g}; try {recipe.lr / 10:g} or less)"
            + (", or check T" if distilling else ""))


def fit(model: nn.Module, data: TensorData, recipe: Recipe, device: torch.device, *,
        loss: Loss = cross_entropy, teacher: Optional[nn.Module] = None,
        teacher_logits: Optional[torch.Tensor] = None,
        on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
        progress: Optional[StepProgress] = None,
        state: Optional[dict[str, Any]] = None,
        checkpoint: Optional[Callable[[dict[str, Any]], None]] = None,
        checkpoint_every: int = 1,
        stop: Optional[Callable[[], bool]] = None) -> list[dict[str, float]]:
    """Train `model` on `data` (already on `device`) by `loss`, fed the frozen teacher's logits if given
    (`teacher_logits`: its logits for the un-augmented training set, when already computed).

    Returns one metrics dict per epoch: epoch, train_loss, test_acc, lr, seconds (+ ce, kd with a teacher).
    `checkpoint(snapshot)` is called every `checkpoint_every` epochs (and at the last), `state` (such a
    snapshot) continues a run exactly where it stopped, and `stop()` is asked after every step: when true,
    the loop checkpoints mid-epoch and raises `Interrupted`. `stop` must be a cheap host-side flag.
    """
    model.to(device, memory_format=memory_format(device, data.x_train.dim())).train()
    forward = torch.compile(model) if recipe.compile else model
    targets = TeacherTargets(teacher, data, teacher_logits) if teacher is not None else None
    optimizer, scheduler = make_optimizer(model, recipe)
    loop = Loop(model, optimizer, scheduler, torch.Generator().manual_seed(recipe.seed),
                torch.Generator(device=device).manual_seed(recipe.seed + 1), [])
    partial = None
    if state is not None:
        loop.restore(state)
        partial = state if state["step"] else None
    n, history = len(data.x_train), loop.history
    steps = math.ceil(n / recipe.batch_size)
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        started = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        lr = optimizer.param_groups[0]["lr"]
        perm, first, sums, bad_step = _epoch_start(partial, loop.order, n, device)
        partial = None
        batches = perm.to(device).split(recipe.batch_size)
        if progress:
            progress.start_epoch(epoch, steps)
            for _ in range(first):
                progress.advance()
        for step in range(first, steps):
            index = batches[step]
            inputs, labels = data.x_train[index], data.y_train[index]
            if data.augment is not None:
                inputs = data.augment(inputs, loop.augment_rng)
            with autocast(device):
                logits = forward(inputs).float()
            parts = loss(logits, labels, targets(index, inputs) if targets else None)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            total = parts.total.detach()
            sums += torch.stack([p.detach() for p in parts]) * len(index)
            bad_step = torch.where((bad_step == 0) & ~torch.isfinite(total), step + 1, bad_step)  # no host sync
            if progress:
                progress.advance()
            if stop is not None and stop():
                if checkpoint:
                    checkpoint(loop.snapshot(step + 1, perm, sums, bad_step, time.perf_counter() - started))
                raise Interrupted(epoch, step + 1, saved=checkpoint is not None)
        _schedule_step(scheduler, resumed_after_last_step=first == steps)
        train_loss, ce, kd = (sums / n).tolist()
        if not math.isfinite(train_loss):
            raise KdrunError(f"training loss became {train_loss} in epoch {epoch}, step {int(bad_step)} of {steps}; "
                             + nonfinite_cause(data, recipe, epoch == 1 and int(bad_step) == 1, targets is not None,
                                               math.isfinite(ce)))
        row = {"epoch": epoch, "train_loss": train_loss, **({"ce": ce, "kd": kd} if targets else {}),
               "test_acc": accuracy(model, data.x_test, data.y_test), "lr": lr,
               "seconds": time.perf_counter() - started}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if checkpoint and _checkpoint_due(epoch, checkpoint_every, recipe.epochs):
            checkpoint(loop.snapshot())
    return history
