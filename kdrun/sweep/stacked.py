"""Many students of one architecture trained as one vectorised model (a stacked sweep group).

The jobs of a group share the data, the architecture, the teacher's logits, the epochs, the
batch size and the optimiser type; each keeps its own initial weights and batch order (its
`seed`), learning rate, weight decay, schedule, `T` and `alpha`. Their parameters live in
one (jobs, P) tensor (`torch.func.stack_module_state`, flattened), one forward and backward
pass (batched matmuls for plain MLPs, `vmap` over `functional_call` otherwise) serves them
all, the test accuracy and the gradient probe are one stacked forward each, and the
optimiser applies torch's own AdamW/SGD update with per-job learning rates and weight decays
as tensors. So a job's trajectory equals the one `engine.fit` gives it alone, up to float
rounding (batched kernels sum in another order). BatchNorm keeps running statistics per job
(stacked buffers).

Each job keeps an ordinary `engine.Loop` (its module, a torch optimiser and scheduler, its
generators, its history): its learning rate comes from its own scheduler and its `last.pt`
is `Loop.snapshot`, so a job of a group resumes alone or in a group alike.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.core.errors import Interrupted, KdrunError
from kdrun.data.base import TensorData
from kdrun.methods.losses import class_softmax
from kdrun.sweep.stacked_model import StackedModel, StackedOptimizer
from kdrun.teachers.knowledge import ProbeSet, grad_ratio_by_student
from kdrun.train.engine import Loop, StepProgress
from kdrun.train.recipe import Recipe, autocast, make_optimizer
from kdrun.train.state import CheckpointSchedule


@dataclass
class Member:
    """One job of a group: its student (initial weights in, trained weights out) and what it trains with.

    `kd` is (T, CE weight, KD weight) for the KD loss (1 - alpha, alpha in the classic form), None for hard labels
    alone; `probe_T` the temperature of its
    gradient-rescaling probe (None: no probe). `on_epoch` records an epoch's row; `checkpoint`
    writes the job's last.pt; `state` is a last.pt to continue from. After training, `history`
    holds the rows and `failed` says why the job stopped early, if it did.
    """

    model: nn.Module
    recipe: Recipe
    kd: Optional[tuple[float, float]] = None
    probe_T: Optional[float] = None
    on_epoch: Optional[Callable[[dict[str, float]], None]] = None
    checkpoint: Optional[Callable[[dict[str, Any]], None]] = None
    state: Optional[dict[str, Any]] = None
    failed: Optional[str] = None
    loop: Optional[Loop] = None
    history: list[dict[str, float]] = field(default_factory=list)


class StackedKDLoss:
    """kdrun.methods.losses.KDLoss (or plain CE) for every job at once: per-job (total, ce, kd), each (J,).

    The per-job factors are computed in double precision on the host, as KDLoss's Python floats are.
    """

    def __init__(self, members: list[Member], device: torch.device) -> None:
        self.kd = members[0].kd is not None
        if self.kd:
            per_job = lambda values: torch.tensor(values, device=device)  # noqa: E731
            self.T = per_job([m.kd[0] for m in members]).view(-1, 1, 1)
            self.T2, self.alpha = per_job([m.kd[0] ** 2 for m in members]), per_job([m.kd[2] for m in members])
            self.rest = per_job([m.kd[1] for m in members])

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor,
                 teacher: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = logits.shape[1]
        ce = -class_softmax(logits, log=True).gather(2, labels.unsqueeze(2)).mean((1, 2))
        if teacher is None or not self.kd:
            return ce, ce, torch.zeros_like(ce)
        kl = F.kl_div(class_softmax(logits / self.T, log=True), class_softmax(teacher / self.T, log=True),
                      reduction="none", log_target=True).sum((1, 2)) / batch
        kd = kl * self.T2
        return self.alpha * kd + self.rest * ce, ce, kd


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows[index] for a (jobs, batch) index, as one index_select (several times faster than advanced indexing)."""
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, *rows.shape[1:])


def _start(members: list[Member], device: torch.device) -> None:
    """Each member's Loop: its torch optimiser and scheduler (for its learning rates) and generators."""
    for m in members:
        optimizer, scheduler = make_optimizer(m.model, m.recipe)
        m.loop = Loop(m.model, optimizer, scheduler, torch.Generator().manual_seed(m.recipe.seed),
                      torch.Generator(device=device).manual_seed(m.recipe.seed + 1), m.history)
        if m.state is not None:
            m.loop.restore(m.state)


@dataclass
class _EpochState:
    """Where every job is within an epoch: batch orders (jobs, n), first step, loss sums (jobs, 3), first bad step."""

    perm: torch.Tensor
    first: int
    sums: torch.Tensor
    bad_step: torch.Tensor
    started: float


class GroupTraining:
    """One stacked training loop over the members of a group (`fit_group`)."""

    def __init__(self, members: list[Member], data: TensorData, device: torch.device,
                 teacher_logits: Optional[torch.Tensor], probe: Optional[ProbeSet],
                 schedule: CheckpointSchedule) -> None:
        self.members, self.data, self.device = members, data, device
        self.teacher_logits, self.probe, self.schedule = teacher_logits, probe, schedule
        for m in members:
            m.model.to(device).train()
        _start(members, device)
        self.model = StackedModel([m.model for m in members])
        self.optimizer = StackedOptimizer(self.model, members[0].recipe)
        for j, m in enumerate(members):
            if m.state is not None:
                self.optimizer.import_from(j, m.loop.optimizer)
        self.loss = StackedKDLoss(members, device)
        self.recipe, self.n = members[0].recipe, len(data.x_train)
        self.steps = math.ceil(self.n / self.recipe.batch_size)

    def run(self, progress: Optional[StepProgress], stop: Optional[Callable[[], bool]],
            after_epoch: Optional[Callable[[int], None]]) -> None:
        resumed = self.members[0].state if self.members[0].state and self.members[0].state["step"] else None
        for epoch in range(len(self.members[0].history) + 1, self.recipe.epochs + 1):
            state = self._resumed_epoch(resumed) if resumed else self._new_epoch()
            resumed = None
            lrs = [m.loop.optimizer.param_groups[0]["lr"] for m in self.members]
            if progress:
                progress.start_epoch(epoch, self.steps)
            self._train_epoch(epoch, state, lrs, progress, stop)
            self._end_epoch(epoch, state, lrs, self._seconds(state))
            if after_epoch:
                after_epoch(epoch)
        for j, m in enumerate(self.members):
            self.model.write_to(j, m.model)

    def _new_epoch(self) -> _EpochState:
        jobs = len(self.members)
        perm = torch.stack([torch.randperm(self.n, generator=m.loop.order) for m in self.members])
        return _EpochState(perm, 0, torch.zeros(jobs, 3, device=self.device),
                           torch.zeros(jobs, dtype=torch.long, device=self.device), time.perf_counter())

    def _resumed_epoch(self, saved: dict[str, Any]) -> _EpochState:
        """The epoch every member's last.pt stopped in (a group is interrupted at one step)."""
        stacked = lambda key: torch.stack([m.state[key] for m in self.members]).to(self.device)  # noqa: E731
        return _EpochState(stacked("perm").cpu(), saved["step"], stacked("sums"), stacked("bad_step"),
                           time.perf_counter() - saved["seconds"] * len(self.members))

    def _seconds(self, state: _EpochState) -> float:
        """Each member's share of the group's time in this epoch (so the members' train_seconds add up to it)."""
        return (time.perf_counter() - state.started) / len(self.members)

    def _train_epoch(self, epoch: int, state: _EpochState, lrs: list[float], progress: Optional[StepProgress],
                     stop: Optional[Callable[[], bool]]) -> None:
        decays = [m.recipe.weight_decay for m in self.members]
        batches = state.perm.to(self.device).split(self.recipe.batch_size, dim=1)
        for step in range(state.first, self.steps):
            index = batches[step]
            params = self.model.params()
            with autocast(self.device):
                logits = self.model(_gather(self.data.x_train, index), params).float()
            teacher = _gather(self.teacher_logits, index) if self.teacher_logits is not None else None
            total, ce, kd = self.loss(logits, _gather(self.data.y_train, index), teacher)
            # Gradients of the views, not of the flat leaf: autograd would build a (jobs, P) zero tensor per view
            self.optimizer.step(torch.autograd.grad(total.sum(), list(params.values())), lrs, decays)
            state.sums += torch.stack([total, ce, kd], 1).detach() * index.shape[1]
            state.bad_step = torch.where((state.bad_step == 0) & ~torch.isfinite(total.detach()), step + 1,
                                         state.bad_step)
            if progress:
                progress.advance()
            if stop is not None and stop():
                self._interrupt(epoch, step + 1, state)

    def _interrupt(self, epoch: int, step: int, state: _EpochState) -> None:
        """Every member's last.pt at this step, then `Interrupted`."""
        seconds = self._seconds(state)
        for j, m in enumerate(self.members):
            if m.checkpoint and not m.failed:
                m.checkpoint(self._snapshot(j, step, state.perm[j], state.sums[j], state.bad_step[j], seconds))
        raise Interrupted(epoch, step, saved=self.members[0].checkpoint is not None)

    def _snapshot(self, j: int, step: int = 0, perm: Optional[torch.Tensor] = None, sums: Optional[torch.Tensor] = None,
                  bad_step: Optional[torch.Tensor] = None, seconds: float = 0.0) -> dict[str, Any]:
        m = self.members[j]
        self.model.write_to(j, m.model)
        self.optimizer.export_to(j, m.loop.optimizer)
        return m.loop.snapshot(step, perm, sums, bad_step, seconds)

    def _probe_rows(self) -> list[dict[str, float]]:
        """The gradient-rescaling probe's numbers per member (empty for members without it), one stacked forward."""
        temperatures = [m.probe_T for m in self.members]
        if self.probe is None or all(T is None for T in temperatures):
            return [{} for _ in self.members]
        rows = grad_ratio_by_student(self.model.predict(self.probe.x), self.probe.teacher_logits, self.probe.labels,
                                     [1.0 if T is None else T for T in temperatures])
        return [{} if T is None else row for T, row in zip(temperatures, rows)]

    def _end_epoch(self, epoch: int, state: _EpochState, lrs: list[float], seconds: float) -> None:
        """Each member's schedule step, row, hooks and checkpoint, as `engine.fit` does at an epoch's end."""
        with warnings.catch_warnings():  # the torch optimisers only hold state: the stacked one took the steps
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for m in self.members:
                m.loop.scheduler.step()
        means, bad = (state.sums / self.n).tolist(), state.bad_step.tolist()
        accuracies, probed = self.model.accuracies(self.data), self._probe_rows()
        checkpoint = self.schedule.due(epoch, self.recipe.epochs)
        for j, m in enumerate(self.members):
            if m.failed:
                continue
            train_loss, ce, kd = means[j]
            if not math.isfinite(train_loss):
                m.failed = (f"training loss became {train_loss} in epoch {epoch}, step {bad[j]} of {self.steps}; lower "
                            f"the learning rate (it is {m.recipe.lr:g}; try {m.recipe.lr / 10:g} or less)")
                continue
            row = {"epoch": epoch, "train_loss": train_loss,
                   **({"ce": ce, "kd": kd} if self.teacher_logits is not None else {}),
                   **accuracies[j], "lr": lrs[j], "seconds": seconds, **probed[j]}
            m.history.append(row)
            if m.on_epoch:
                m.on_epoch(row)
            if m.checkpoint and checkpoint:
                m.checkpoint(self._snapshot(j))


def fit_group(members: list[Member], data: TensorData, device: torch.device, *,
              teacher_logits: Optional[torch.Tensor] = None, probe: Optional[ProbeSet] = None,
              checkpoint_every: int = 1, checkpoint_min_seconds: float = 0.0,
              progress: Optional[StepProgress] = None, stop: Optional[Callable[[], bool]] = None,
              after_epoch: Optional[Callable[[int], None]] = None) -> None:
    """Train every member for its recipe's epochs as one stacked model (see the module docstring).

    Rows match `engine.fit`'s; `seconds` is the member's share of the group's epoch time. A member
    whose loss turns non-finite is marked `failed` and recorded no further; the others go on.
    `probe` adds the gradient-rescaling probe to the rows of members with a `probe_T`. last.pt is
    written as `engine.fit` writes it (`CheckpointSchedule`); on `stop()`, every member
    checkpoints and `Interrupted` is raised. `after_epoch(epoch)` is called once per epoch,
    after the members' rows.
    """
    if not isinstance(data, TensorData):
        raise KdrunError(f"stacked training needs an in-memory dataset; '{data.name}' is streamed from disk: "
                         "sweep it with another hydra/launcher")
    schedule = CheckpointSchedule(checkpoint_every, checkpoint_min_seconds)
    GroupTraining(members, data, device, teacher_logits, probe, schedule).run(progress, stop, after_epoch)
