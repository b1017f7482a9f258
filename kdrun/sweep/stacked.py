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

import copy
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdrun.data import TensorData
from kdrun.train.engine import CheckpointSchedule, Loop, Recipe, StepProgress, autocast, make_optimizer
from kdrun.core.errors import Interrupted, KdrunError
from kdrun.teachers.knowledge import ProbeSet, grad_ratio_by_student
from kdrun.methods.losses import class_softmax

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which make_optimizer uses


@dataclass
class Member:
    """One job of a group: its student (initial weights in, trained weights out) and what it trains with.

    `kd` is (T, alpha) for the KD loss, None for hard labels alone; `probe_T` the temperature of its
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


def _is_plain_mlp(model: nn.Module) -> bool:
    """An nn.Sequential of a Flatten, then Linear (with bias) and ReLU layers only, e.g. kdrun's `mlp`."""
    children = list(model.children())
    return (isinstance(model, nn.Sequential) and bool(children) and isinstance(children[0], nn.Flatten)
            and all(isinstance(c, nn.ReLU) or (isinstance(c, nn.Linear) and c.bias is not None)
                    for c in children[1:]))


@dataclass(frozen=True)
class Slot:
    """Where one parameter lives in the flat (jobs, P) buffer: columns [start, end), viewed as (jobs, *shape)."""

    name: str
    start: int
    end: int
    shape: tuple[int, ...]


class StackedModel:
    """The members' parameters in one flat (jobs, P) tensor, buffers stacked, run through one functional module.

    Each parameter is a view of its columns (`params()`), so the optimiser updates every
    parameter of every job in a handful of element-wise operations on one tensor; the
    arithmetic per element is the same as per parameter.
    """

    def __init__(self, models: list[nn.Module]) -> None:
        params, self.buffers = stack_module_state(models)
        self.jobs, start, self.slots = len(models), 0, []
        for name, tensor in params.items():
            size = tensor[0].numel()
            self.slots.append(Slot(name, start, start + size, tuple(tensor.shape[1:])))
            start += size
        self.flat = torch.cat([t.detach().reshape(self.jobs, -1) for t in params.values()], 1).requires_grad_(True)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.base.train()

        def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self._forward, self._forward_shared_input = vmap(one), vmap(one, in_dims=(0, 0, None))
        self._plain_mlp = _is_plain_mlp(models[0])

    def params(self, flat: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Each parameter as a (jobs, *shape) view of `flat` (the parameters, or a state shaped like them)."""
        flat = self.flat if flat is None else flat
        return {s.name: flat[:, s.start:s.end].view(self.jobs, *s.shape) for s in self.slots}

    def __call__(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (jobs, batch, classes) for inputs (jobs, batch, ...), each job its own batch, by `params()`."""
        if self._plain_mlp:
            return self._mlp(x, params)
        return self._forward(params, self.buffers, x)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every job's logits (jobs, batch, classes) for the same inputs, its module in eval mode."""
        self.base.eval()
        with autocast(inputs.device):
            logits = (self._mlp(inputs.expand(self.jobs, *inputs.shape), self.params()) if self._plain_mlp
                      else self._forward_shared_input(self.params(), self.buffers, inputs)).float()
        self.base.train()
        return logits

    def accuracies(self, data: TensorData) -> list[float]:
        """Every job's test accuracy, one pass over the test set for all."""
        batches = data.test_batches(data.x_test.device)
        correct = sum((self.predict(inputs).argmax(2) == labels).sum(1) for inputs, labels in batches)
        return (correct / data.test_size).tolist()

    def _mlp(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flatten/Linear/ReLU stacks as batched matmuls W @ h on features-major (jobs, features, batch)
        activations: the same sums as vmap's, fewer dispatches, and every weight gradient comes out
        contiguous (h @ W^T would give transposed ones, which the optimiser's flat gradient must copy)."""
        h = x.flatten(2).transpose(1, 2)
        for name, module in list(self.base.named_children())[1:]:
            if isinstance(module, nn.Linear):
                h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(2), params[f"{name}.weight"], h)
            else:
                h = torch.relu(h)
        return h.transpose(1, 2)

    def _tensors(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(the module's tensor, its stacked (jobs, ...) counterpart) for every parameter and buffer."""
        stacked = {**self.params(), **self.buffers}
        return [(tensor, stacked[name]) for name, tensor in [*model.named_parameters(), *model.named_buffers()]]

    @torch.no_grad()
    def write_to(self, j: int, model: nn.Module) -> None:
        """Copy job j's weights and buffers into its own module."""
        for tensor, stacked in self._tensors(model):
            tensor.copy_(stacked[j])

    @torch.no_grad()
    def read_from(self, j: int, model: nn.Module) -> None:
        """Copy a module's weights and buffers into job j's slice (a resumed job)."""
        for tensor, stacked in self._tensors(model):
            stacked[j].copy_(tensor)


class StackedOptimizer:
    """torch.optim.AdamW / SGD's update, once for all jobs, with per-job learning rate and weight decay.

    The arithmetic follows torch's single-tensor implementations step for step, on the flat
    (jobs, P) parameter buffer; the per-job state maps onto each job's torch optimiser for
    checkpoints (`export_to` / `import_from`).
    """

    def __init__(self, model: StackedModel, recipe: Recipe) -> None:
        self.model, self.param, self.kind = model, model.flat, recipe.optimizer
        self.momentum, self.nesterov = recipe.momentum, recipe.nesterov
        self.steps = 0
        self.state: dict[str, torch.Tensor] = {}
        # Preallocated (jobs, P) buffers: a fresh megabyte-sized tensor per operation and step costs more
        # than the arithmetic (the allocator hands back fresh pages).
        self.grad, self.scratch = torch.empty_like(self.param), torch.empty_like(self.param)

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lrs: list[float], weight_decays: list[float]) -> None:
        """One update of every job by its gradients (one per `StackedModel.params()` view); the per-job
        factors in double precision, as torch's Python floats are."""
        self.steps += 1
        torch.cat([g.reshape(self.model.jobs, -1) for g in grads], 1, out=self.grad)
        like = self.param
        per_job = lambda values: torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1)  # noqa: E731
        if self.kind == "sgd":
            decay = per_job(weight_decays) if any(weight_decays) else None
            self._sgd(decay, per_job([-lr for lr in lrs]))
        else:
            decay = per_job([1 - lr * wd for lr, wd in zip(lrs, weight_decays)]) if any(weight_decays) else None
            self._adamw(decay, per_job([-lr / (1 - ADAM_BETAS[0] ** self.steps) for lr in lrs]))

    def _adamw(self, decay: Optional[torch.Tensor], step: torch.Tensor) -> None:
        """torch.optim.AdamW (_single_tensor_adam): `decay` = 1 - lr * wd, `step` = -lr / bias_correction1."""
        param, grad, state, (beta1, beta2) = self.param, self.grad, self.state, ADAM_BETAS
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(param), torch.zeros_like(param)
        if decay is not None:
            param.mul_(decay)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        denom = torch.sqrt(state["exp_avg_sq"], out=self.scratch).div_(bias_correction2_sqrt).add_(ADAM_EPS)
        param.addcmul_(torch.div(state["exp_avg"], denom, out=self.scratch), step)

    def _sgd(self, decay: Optional[torch.Tensor], step: torch.Tensor) -> None:
        """torch.optim.SGD (_single_tensor_sgd, dampening 0): `decay` = wd, `step` = -lr."""
        param, grad = self.param, self.grad
        if decay is not None:
            grad.addcmul_(param, decay)  # the flat gradient is ours to change
        if self.momentum != 0:
            if "momentum_buffer" not in self.state:
                self.state["momentum_buffer"] = grad.clone()
            else:
                self.state["momentum_buffer"].mul_(self.momentum).add_(grad)
            buffer = self.state["momentum_buffer"]
            grad = grad.add(buffer, alpha=self.momentum) if self.nesterov else buffer
        param.addcmul_(grad, step)

    def _per_param(self, optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(job's torch parameter, {state name: its (jobs, *shape) stacked view}) in the optimiser's order."""
        views = {name: self.model.params(tensor) for name, tensor in self.state.items()}
        return [(param, {name: view[slot.name] for name, view in views.items()})
                for param, slot in zip(optimizer.param_groups[0]["params"], self.model.slots)]

    def export_to(self, j: int, optimizer: torch.optim.Optimizer) -> None:
        """Job j's state, in torch's own layout, into its torch optimiser (before `state_dict()`)."""
        for param, stacked in self._per_param(optimizer):
            if stacked:
                optimizer.state[param] = {name: view[j].clone() for name, view in stacked.items()}
                if self.kind != "sgd":
                    optimizer.state[param]["step"] = torch.tensor(float(self.steps))

    def import_from(self, j: int, optimizer: torch.optim.Optimizer) -> None:
        """Job j's state from its torch optimiser (a resumed job)."""
        saved_names = {n for s in optimizer.state.values() for n, t in s.items() if n != "step" and t is not None}
        for name in saved_names:
            self.state.setdefault(name, torch.zeros_like(self.param))
        for param, stacked in self._per_param(optimizer):
            saved = optimizer.state.get(param, {})
            if "step" in saved:
                self.steps = int(saved["step"].item())
            for name, view in stacked.items():
                if saved.get(name) is not None:
                    view[j].copy_(saved[name])


class StackedKDLoss:
    """kdrun.methods.losses.KDLoss (or plain CE) for every job at once: per-job (total, ce, kd), each (J,).

    The per-job factors are computed in double precision on the host, as KDLoss's Python floats are.
    """

    def __init__(self, members: list[Member], device: torch.device) -> None:
        self.kd = members[0].kd is not None
        if self.kd:
            per_job = lambda values: torch.tensor(values, device=device)  # noqa: E731
            self.T = per_job([m.kd[0] for m in members]).view(-1, 1, 1)
            self.T2, self.alpha = per_job([m.kd[0] ** 2 for m in members]), per_job([m.kd[1] for m in members])
            self.rest = per_job([1 - m.kd[1] for m in members])

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
                   "test_acc": accuracies[j], "lr": lrs[j], "seconds": seconds, **probed[j]}
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
