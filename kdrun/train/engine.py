"""The training loop: plain modules, tensors and numbers in, per-epoch metrics out.

It never reads Hydra state, so tests and other tools can call it directly. Batches come
from the dataset (`train_batches`: indexed from tensors already on the device, or streamed by
DataLoader workers). The frozen teacher's logits come from a cache computed once when the
training inputs are the same every epoch; otherwise the teacher sees the same augmented batch
as the student ("consistent teaching", Beyer et al. 2022), or its stored outputs for that
augmented batch are read (`teacher_outputs`, kdrun.teachers.outputs). The loop keeps running sums
on the device and syncs with the host once per epoch.

On several processes (torchrun, SLURM; see kdrun/core/distributed.py) the student is wrapped in
DistributedDataParallel and each rank trains on its strided share of every global batch. Each
rank's mean loss is scaled by its share of the global batch, so the averaged gradient is the
gradient of the global batch's mean loss: the same steps as one process with that batch.

The loss is a `kdrun.methods.Method`: each step it gets one `Batch` (student logits, labels,
teacher logits, sample indices, and the named stage features it asked for). A method's own
trainable parts are optimised with the student and saved in every snapshot. A method that reads
teacher features runs the teacher live on every batch: features are never cached.

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

from kdrun.core.distributed import all_sum, any_rank, context, share_buffers
from kdrun.core.errors import Diverged, Interrupted, KdrunError
from kdrun.core.runtime import memory_format
from kdrun.data.base import EpochPlan, batch_sizes
from kdrun.methods.base import Batch, Method, as_method
from kdrun.methods.losses import cross_entropy
from kdrun.models.stages import tap
from kdrun.train.evaluate import epoch_accuracy, predict
from kdrun.train.recipe import Recipe, autocast, make_optimizer, stretch_schedule
from kdrun.train.state import CheckpointSchedule, capture_rng, plain_scheduler_state, restore_rng, restore_scheduler


class StepProgress(Protocol):
    def start_epoch(self, epoch: int, steps: int) -> None: ...
    def advance(self) -> None: ...


class StoredOutputs(Protocol):
    """A teacher-output store (kdrun.teachers.outputs): one epoch's outputs, whose `logits(index)` are the
    teacher's (rebuilt) logits for those training samples as the replayed augmentation shows them."""

    def epoch(self, epoch: int) -> Any: ...


class TeacherTargets:
    """The frozen teacher's logits (and named stage features) for a training batch: cached or live.

    The logit cache is keyed by sample index, which is only correct when the student sees the
    same inputs every epoch; with augmentation (or streamed data), or when stage features are
    asked for, the teacher runs on the batch.
    """

    def __init__(self, teacher: nn.Module, data: Any, logits: Optional[torch.Tensor] = None,
                 stages: tuple[str, ...] = (), stored: Optional[StoredOutputs] = None) -> None:
        """`logits`: the teacher's logits for `data.x_train` if already known (e.g. from the sweep's cache);
        `stages`: the named stages whose features the method reads (then the teacher always runs live);
        `stored`: a teacher-output store (`teacher.outputs=store`), read epoch by epoch instead of the teacher."""
        self.teacher = teacher.eval().requires_grad_(False)
        self.stages = list(stages)
        self.cache = None
        self.nonfinite: Any = False  # whether any logits it gave were NaN or inf (a device flag: no host sync)
        self.stored, self.epoch_outputs = stored, None
        if stored is not None and stages:
            raise KdrunError(f"teacher.outputs=store keeps the teacher's logits only, but this method reads its "
                             f"features ({', '.join(stages)}); use teacher.outputs=live or a logit method (kd, dkd)")
        if data.static_inputs and not stages and stored is None:
            self.cache = logits if logits is not None else predict(teacher, data.x_train)
            if not torch.isfinite(self.cache).all():
                raise KdrunError(f"the teacher outputs NaN or inf for {int((~torch.isfinite(self.cache)).any(1).sum())} "
                                 "training examples; its weights are damaged or diverged: check teacher.checkpoint")

    def start_epoch(self, epoch: int) -> None:
        """Before an epoch's first step: that epoch's stored outputs (built now if no job has)."""
        if self.stored is not None:
            self.epoch_outputs = self.stored.epoch(epoch)

    def __call__(self, index: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.epoch_outputs is not None:
            return self.epoch_outputs.logits(index), {}
        if self.cache is not None:
            return self.cache[index], {}
        if not self.stages:
            logits, features = predict(self.teacher, inputs, len(inputs)), {}
        else:
            with torch.no_grad(), autocast(inputs.device), tap(self.teacher, self.stages) as taps:
                logits, features = self.teacher(inputs).float(), taps
        self.nonfinite = ~torch.isfinite(logits).all() | self.nonfinite
        return logits, {name: f.float() for name, f in features.items()}


@dataclass
class Loop:
    """What a training run carries between steps: everything `last.pt` must hold to continue it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    order: torch.Generator
    augment_rng: torch.Generator
    history: list[dict[str, float]]
    method: Optional[Method] = None  # its trainable parts and buffers (connectors, CRD's memory bank)

    def snapshot(self, step: int = 0, perm: Optional[torch.Tensor] = None, sums: Optional[torch.Tensor] = None,
                 bad_step: Optional[torch.Tensor] = None, seconds: float = 0.0) -> dict[str, Any]:
        """The state after `len(history)` whole epochs plus `step` steps of the next (0: at an epoch boundary)."""
        return {
            "epoch": len(self.history), "step": step, "seconds": seconds, "world_size": context().world_size,
            "perm": perm, "sums": None if sums is None else all_sum(sums.clone()).cpu(),  # rank 0 resumes the totals
            "bad_step": None if bad_step is None else bad_step.cpu(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "method": {} if self.method is None else {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain_scheduler_state(self.scheduler.state_dict()),
            "scaler": None,  # bf16 autocast needs no GradScaler
            "rng": capture_rng(self.order, self.augment_rng),
            "history": [dict(row) for row in self.history],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot; the random states last, after anything that might draw from them."""
        self.model.load_state_dict(state["model"])
        if self.method is not None:
            self.method.load_state_dict(state.get("method", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        restore_scheduler(self.scheduler, state["scheduler"])
        self.history[:] = [dict(row) for row in state["history"]]
        restore_rng(state["rng"], self.order, self.augment_rng)


def _epoch_start(partial: Optional[dict[str, Any]], order: torch.Generator, n: int,
                 device: torch.device) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """Batch order, first step, running sums and first-bad-step record: fresh, or an interrupted epoch's
    (whose sums, already totalled over ranks, continue on rank 0 only)."""
    bad_step = torch.zeros((), dtype=torch.long, device=device)  # first non-finite step (1-based), 0 = none
    if partial:
        sums = partial["sums"].to(device) if context().is_main else torch.zeros(3, device=device)
        return partial["perm"], partial["step"], sums, partial["bad_step"].to(device)
    return torch.randperm(n, generator=order), 0, torch.zeros(3, device=device), bad_step


def _trained_module(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the loop calls: the model itself, or on several ranks its DistributedDataParallel wrapper."""
    if not context().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _schedule_step(scheduler: Any, resumed_after_last_step: bool) -> None:
    """Advance the LR schedule. Resumed right after an epoch's last step, this process has not called
    optimizer.step() yet and torch warns of a wrong order that did not happen; silence only that."""
    with warnings.catch_warnings():
        if resumed_after_last_step:
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        scheduler.step()


def nonfinite_cause(data: Any, recipe: Recipe, first_step: bool, targets: Optional[TeacherTargets],
                    ce_finite: bool) -> str:
    """The likely cause of a non-finite loss, most specific first: the data, the teacher's output, the
    distillation term (T), the model before any update, else the learning rate."""
    in_memory = hasattr(data, "x_train")  # a streamed set cannot be checked whole
    distilling = targets is not None
    if in_memory and not (torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()):
        return "the training data contains NaN or inf; check the dataset (and dataset.kwargs)"
    if distilling and bool(targets.nonfinite):
        return "the teacher's output became NaN or inf on this data; check the teacher (teacher.checkpoint, its kwargs)"
    if distilling and ce_finite:
        return "the distillation term is not finite while cross-entropy is; check T (try T=4) and the teacher's logits"
    if first_step:
        return ("the very first step, before any update; check the data and the model"
                + ("'s teacher and T" if distilling else ""))
    return (f"lower the learning rate (it is optim.lr={recipe.lr:g}; try {recipe.lr / 10:g} or less)"
            + (", or check T" if distilling else ""))


def student_step(forward: Callable, model: nn.Module, stages: tuple[str, ...], inputs: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The student's logits and the stage features its method reads (float32)."""
    with autocast(device), tap(model, list(stages)) as features:
        logits = forward(inputs).float()
    return logits, {name: f.float() for name, f in features.items()}


def fit(model: nn.Module, data: Any, recipe: Recipe, device: torch.device, *,
        loss: Any = cross_entropy, teacher: Optional[nn.Module] = None,
        teacher_logits: Optional[torch.Tensor] = None,
        teacher_outputs: Optional[StoredOutputs] = None,
        on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
        progress: Optional[StepProgress] = None,
        state: Optional[dict[str, Any]] = None,
        checkpoint: Optional[Callable[[dict[str, Any]], None]] = None,
        checkpoint_every: int = 1,
        checkpoint_min_seconds: float = 0.0,
        stop: Optional[Callable[[], bool]] = None) -> list[dict[str, float]]:
    """Train `model` on `data` (a `TensorData` already on `device`, or a `StreamingData`) by `loss` (a Method,
    or a plain logit loss), with the frozen teacher's logits and features if given (`teacher_logits`: its
    logits for the un-augmented training set, when already computed; `teacher_outputs`: a store of its
    outputs per (sample, epoch), read instead of running it, the augmentation replayed to match).

    Returns one metrics dict per epoch: epoch, train_loss, test_acc, lr, seconds (+ ce, kd with a teacher;
    + val_acc with a validation split).
    `checkpoint(snapshot)` is called every `checkpoint_every` epochs (and at the last; not sooner than
    `checkpoint_min_seconds` after the previous one, see `CheckpointSchedule`), `state` (such a
    snapshot) continues a run exactly where it stopped, and `stop()` is asked after every step: when true,
    the loop checkpoints mid-epoch and raises `Interrupted`. `stop` must be a cheap host-side flag.
    """
    ctx = context()
    model.to(device, memory_format=memory_format(device, len(data.input_shape) + 1)).train()
    trained = _trained_module(model, device)
    forward = torch.compile(trained) if recipe.compile else trained
    method = as_method(loss).to(device).train()
    if ctx.distributed and any(True for _ in method.parameters()):
        raise KdrunError("this method has trainable parts, which torchrun does not synchronise across processes "
                         "yet; run it in one process")
    if teacher_outputs is not None:  # each sample's crop drawn again from (seed, epoch, index), as the store's
        data = data.with_replay()
    targets = (TeacherTargets(teacher, data, teacher_logits, method.teacher_stages, teacher_outputs)
               if teacher is not None and method.needs_teacher else None)
    optimizer, scheduler = make_optimizer(model, recipe, extra=method.parameters())
    schedule = CheckpointSchedule(checkpoint_every, checkpoint_min_seconds)
    loop = Loop(model, optimizer, scheduler, torch.Generator().manual_seed(recipe.seed),
                torch.Generator(device=device).manual_seed(recipe.seed + 1), [], method)
    partial = None
    if state is not None:
        loop.restore(state)
        stretch_schedule(scheduler, recipe.epochs)  # an extended run (resume=RUN_DIR epochs=N); else no change
        partial = state if state["step"] else None
    n, history = data.train_size, loop.history
    sizes = batch_sizes(n, recipe.batch_size, ctx.world_size)
    steps, seen = len(sizes), sum(sizes)
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        started = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        lr = optimizer.param_groups[0]["lr"]
        perm, first, sums, bad_step = _epoch_start(partial, loop.order, n, device)
        partial = None
        plan = EpochPlan(epoch, perm, sizes, first, recipe.seed)
        if targets:
            targets.start_epoch(epoch)
        if progress:
            progress.start_epoch(epoch, steps)
            for _ in range(first):
                progress.advance()
        for step, (index, inputs, labels) in enumerate(data.train_batches(plan, device, loop.augment_rng), first):
            logits, features = student_step(forward, model, method.student_stages, inputs, device)
            t_logits, t_features = targets(index, inputs) if targets else (None, {})
            parts = method(Batch(logits, labels, t_logits, index, features, t_features))
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: weigh each rank's mean by its share of the global batch.
            share = parts.total * (len(labels) * ctx.world_size / sizes[step]) if ctx.distributed else parts.total
            share.backward()
            optimizer.step()
            total = parts.total.detach()
            sums += torch.stack([p.detach() for p in parts]) * len(labels)
            bad_step = torch.where((bad_step == 0) & ~torch.isfinite(total), step + 1, bad_step)  # no host sync
            if progress:
                progress.advance()
            if stop is not None and any_rank(stop(), device):
                if checkpoint:
                    checkpoint(loop.snapshot(step + 1, perm, sums, bad_step, time.perf_counter() - started))
                raise Interrupted(epoch, step + 1, saved=checkpoint is not None)
        _schedule_step(scheduler, resumed_after_last_step=first == steps)
        share_buffers(model)
        train_loss, ce, kd = (all_sum(sums) / seen).tolist()
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}, step {int(bad_step)} of {steps}; "
                             + nonfinite_cause(data, recipe, epoch == 1 and int(bad_step) == 1, targets,
                                               math.isfinite(ce)))
        row = {"epoch": epoch, "train_loss": train_loss, **({"ce": ce, "kd": kd} if teacher is not None else {}),
               **epoch_accuracy(model, data, device), "lr": lr,
               "seconds": time.perf_counter() - started}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if checkpoint and schedule.due(epoch, recipe.epochs):
            checkpoint(loop.snapshot())
    return history
