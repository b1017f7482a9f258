"""Many students of one architecture trained as one vectorised model (a stacked sweep group).

The jobs of a group share the data, the architecture, the teacher's logits, the epochs, the
batch size and the optimiser type; each keeps its own initial weights and batch order (its
`seed`), learning rate, weight decay, schedule, `T` and `alpha`. Their parameters are
stacked along a leading job dimension (`torch.func.stack_module_state`), one forward and
backward pass (`vmap` over `functional_call`) serves them all, and the optimiser applies
torch's own AdamW/SGD update with per-job learning rates and weight decays as tensors. So a
job's trajectory equals the one `engine.fit` gives it alone, up to float rounding (batched
matmuls sum in another order). BatchNorm keeps running statistics per job (stacked buffers).

Each job keeps an ordinary `engine.Loop` (its module, a torch optimiser and scheduler, its
generators, its history): its learning rate comes from its own scheduler, its test accuracy
from `engine.evaluate` on its own module, and its `last.pt` is `Loop.snapshot`, so a job of
a group resumes alone or in a group alike.
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
from kdrun.engine import Loop, Recipe, StepProgress, autocast, evaluate, make_optimizer
from kdrun.errors import Interrupted, KdrunError

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which make_optimizer uses


@dataclass
class Member:
    """One job of a group: its student (initial weights in, trained weights out) and what it trains with.

    `kd` is (T, alpha) for the KD loss, None for hard labels alone. `on_epoch` records an epoch's
    row; `checkpoint` writes the job's last.pt; `state` is a last.pt to continue from. After
    training, `history` holds the rows and `failed` says why the job stopped early, if it did.
    """

    model: nn.Module
    recipe: Recipe
    kd: Optional[tuple[float, float]] = None
    on_epoch: Optional[Callable[[dict[str, float]], None]] = None
    checkpoint: Optional[Callable[[dict[str, Any]], None]] = None
    state: Optional[dict[str, Any]] = None
    failed: Optional[str] = None
    loop: Optional[Loop] = None
    history: list[dict[str, float]] = field(default_factory=list)


def _per_job(factor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (J,) factor viewed as (J, 1, 1, ...), to broadcast one value per job over a stacked tensor."""
    return factor.view(-1, *[1] * (like.dim() - 1))


def _is_plain_mlp(model: nn.Module) -> bool:
    """An nn.Sequential of Flatten (first), Linear (with bias) and ReLU layers only, e.g. kdrun's `mlp`."""
    children = list(model.children())
    return (isinstance(model, nn.Sequential) and bool(children) and isinstance(children[0], nn.Flatten)
            and all(isinstance(c, (nn.Flatten, nn.ReLU)) or (isinstance(c, nn.Linear) and c.bias is not None)
                    for c in children))


class StackedModel:
    """The members' parameters and buffers stacked along dim 0, run through one functional module."""

    def __init__(self, models: list[nn.Module]) -> None:
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = buffers
        self.base = copy.deepcopy(models[0]).to("meta")
        self.base.train()

        def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self._forward = vmap(one)
        self._plain_mlp = _is_plain_mlp(models[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._plain_mlp:
            return self._mlp(x)
        return self._forward(self.params, self.buffers, x)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten/Linear/ReLU stacks as batched matmuls: the same arithmetic as vmap's, fewer dispatches."""
        h = x
        for name, module in self.base.named_children():
            if isinstance(module, nn.Flatten):
                h = h.flatten(2)
            elif isinstance(module, nn.Linear):
                h = torch.baddbmm(self.params[f"{name}.bias"].unsqueeze(1), h,
                                  self.params[f"{name}.weight"].transpose(1, 2))
            else:
                h = torch.relu(h)
        return h

    def write_to(self, j: int, model: nn.Module) -> None:
        """Copy job j's weights and buffers into its own module."""
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                source = self.params.get(name, self.buffers.get(name))
                tensor.copy_(source[j])

    def read_from(self, j: int, model: nn.Module) -> None:
        """Copy a module's weights and buffers into job j's slice (a resumed job)."""
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                self.params.get(name, self.buffers.get(name))[j].copy_(tensor)


class StackedOptimizer:
    """torch.optim.AdamW / SGD's update, once for all jobs, with per-job learning rate and weight decay.

    The arithmetic follows torch's single-tensor implementations step for step; the per-job
    state maps onto each job's torch optimiser for checkpoints (`export_to` / `import_from`).
    """

    def __init__(self, params: list[torch.Tensor], recipe: Recipe) -> None:
        self.params, self.kind = params, recipe.optimizer
        self.momentum, self.nesterov = recipe.momentum, recipe.nesterov
        self.steps = 0
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in params]

    @torch.no_grad()
    def step(self, lrs: list[float], weight_decays: list[float]) -> None:
        """One update of every job; the per-job factors in double precision, as torch's Python floats are."""
        self.steps += 1
        device = self.params[0].device
        per_job = lambda values: torch.tensor(values, dtype=self.params[0].dtype, device=device)  # noqa: E731
        if self.kind == "sgd":
            decay = per_job(weight_decays) if any(weight_decays) else None
            step = per_job([-lr for lr in lrs])
        else:
            decay = per_job([1 - lr * wd for lr, wd in zip(lrs, weight_decays)]) if any(weight_decays) else None
            step = per_job([-lr / (1 - ADAM_BETAS[0] ** self.steps) for lr in lrs])
        for param, state in zip(self.params, self.state):
            update = self._sgd if self.kind == "sgd" else self._adamw
            update(param, param.grad, state, None if decay is None else _per_job(decay, param), _per_job(step, param))

    def _adamw(self, param: torch.Tensor, grad: torch.Tensor, state: dict, decay: Optional[torch.Tensor],
               step: torch.Tensor) -> None:
        """torch.optim.AdamW (_single_tensor_adam): `decay` = 1 - lr * wd, `step` = -lr / bias_correction1."""
        beta1, beta2 = ADAM_BETAS
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(param), torch.zeros_like(param)
        if decay is not None:
            param.mul_(decay)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        param.addcmul_(state["exp_avg"] / denom, step)

    def _sgd(self, param: torch.Tensor, grad: torch.Tensor, state: dict, decay: Optional[torch.Tensor],
             step: torch.Tensor) -> None:
        """torch.optim.SGD (_single_tensor_sgd, dampening 0): `decay` = wd, `step` = -lr."""
        if decay is not None:
            grad = grad.add(param * decay)
        if self.momentum != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(self.momentum).add_(grad)
            buffer = state["momentum_buffer"]
            grad = grad.add(buffer, alpha=self.momentum) if self.nesterov else buffer
        param.add_(grad * step)

    def export_to(self, j: int, optimizer: torch.optim.Optimizer) -> None:
        """Job j's state, in torch's own layout, into its torch optimiser (before `state_dict()`)."""
        for param, state in zip(optimizer.param_groups[0]["params"], self.state):
            if not state:
                continue
            optimizer.state[param] = {name: tensor[j].clone() for name, tensor in state.items()}
            if self.kind != "sgd":
                optimizer.state[param]["step"] = torch.tensor(float(self.steps))

    def import_from(self, j: int, optimizer: torch.optim.Optimizer) -> None:
        """Job j's state from its torch optimiser (a resumed job)."""
        for param, stacked, state in zip(optimizer.param_groups[0]["params"], self.params, self.state):
            saved = optimizer.state.get(param, {})
            if "step" in saved:
                self.steps = int(saved["step"].item())
            for name, tensor in saved.items():
                if name != "step" and tensor is not None:
                    state.setdefault(name, torch.zeros_like(stacked))[j].copy_(tensor)


class StackedKDLoss:
    """kdrun.losses.KDLoss (or plain CE) for every job at once: per-job (total, ce, kd), each (J,).

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
        jobs, batch, classes = logits.shape
        ce = F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="none").view(jobs, batch).mean(1)
        if teacher is None or not self.kd:
            return ce, ce, torch.zeros_like(ce)
        kl = F.kl_div(F.log_softmax(logits / self.T, dim=2), F.log_softmax(teacher / self.T, dim=2),
                      reduction="none", log_target=True).sum((1, 2)) / batch
        kd = kl * self.T2
        return self.alpha * kd + self.rest * ce, ce, kd


def _start(members: list[Member], device: torch.device) -> None:
    """Each member's Loop: its torch optimiser and scheduler (for its learning rates) and generators."""
    for m in members:
        optimizer, scheduler = make_optimizer(m.model, m.recipe)
        m.loop = Loop(m.model, optimizer, scheduler, torch.Generator().manual_seed(m.recipe.seed),
                      torch.Generator(device=device).manual_seed(m.recipe.seed + 1), m.history)
        if m.state is not None:
            m.loop.restore(m.state)


def _snapshot(m: Member, j: int, model: StackedModel, optimizer: StackedOptimizer, step: int = 0,
              perm: Optional[torch.Tensor] = None, sums: Optional[torch.Tensor] = None,
              bad_step: Optional[torch.Tensor] = None, seconds: float = 0.0) -> dict[str, Any]:
    model.write_to(j, m.model)
    optimizer.export_to(j, m.loop.optimizer)
    return m.loop.snapshot(step, None if perm is None else perm[j], None if sums is None else sums[j],
                           None if bad_step is None else bad_step[j], seconds)


def fit_group(members: list[Member], data: TensorData, device: torch.device, *,
              teacher_logits: Optional[torch.Tensor] = None, checkpoint_every: int = 1,
              progress: Optional[StepProgress] = None, stop: Optional[Callable[[], bool]] = None,
              after_epoch: Optional[Callable[[int], None]] = None) -> None:
    """Train every member for its recipe's epochs as one stacked model (see the module docstring).

    Rows match `engine.fit`'s; `seconds` is the member's share of the group's epoch time (so the
    members' train_seconds add up to the group's). A member whose loss turns non-finite is marked
    `failed` and recorded no further; the others go on. On `stop()`, every member checkpoints
    and `Interrupted` is raised. `after_epoch(epoch)` is called once per epoch, after the members' rows.
    """
    if not isinstance(data, TensorData):
        raise KdrunError(f"stacked training needs an in-memory dataset; '{data.name}' is streamed from disk: "
                         "sweep it with another hydra/launcher")
    for m in members:
        m.model.to(device).train()
    _start(members, device)
    model = StackedModel([m.model for m in members])
    optimizer = StackedOptimizer(list(model.params.values()), members[0].recipe)
    for j, m in enumerate(members):
        if m.state is not None:
            optimizer.import_from(j, m.loop.optimizer)
    recipe, n = members[0].recipe, len(data.x_train)
    kd_loss = StackedKDLoss(members, device)
    steps = math.ceil(n / recipe.batch_size)
    partial = members[0].state if members[0].state and members[0].state["step"] else None
    for epoch in range(len(members[0].history) + 1, recipe.epochs + 1):
        started = time.perf_counter() - (partial["seconds"] * len(members) if partial else 0.0)
        lrs = [m.loop.optimizer.param_groups[0]["lr"] for m in members]
        decays = [m.recipe.weight_decay for m in members]
        if partial:
            perm = torch.stack([m.state["perm"] for m in members])
            first, sums = partial["step"], torch.stack([m.state["sums"] for m in members]).to(device)
            bad_step = torch.stack([m.state["bad_step"] for m in members]).to(device)
        else:
            perm = torch.stack([torch.randperm(n, generator=m.loop.order) for m in members])
            first, sums = 0, torch.zeros(len(members), 3, device=device)
            bad_step = torch.zeros(len(members), dtype=torch.long, device=device)
        partial = None
        batches = perm.to(device).split(recipe.batch_size, dim=1)
        if progress:
            progress.start_epoch(epoch, steps)
        for step in range(first, steps):
            index = batches[step]
            with autocast(device):
                logits = model(data.x_train[index]).float()
            teacher = teacher_logits[index] if teacher_logits is not None else None
            total, ce, kd = kd_loss(logits, data.y_train[index], teacher)
            for p in model.params.values():
                p.grad = None
            total.sum().backward()
            optimizer.step(lrs, decays)
            sums += torch.stack([total, ce, kd], 1).detach() * index.shape[1]
            bad_step = torch.where((bad_step == 0) & ~torch.isfinite(total.detach()), step + 1, bad_step)
            if progress:
                progress.advance()
            if stop is not None and stop():
                seconds = (time.perf_counter() - started) / len(members)
                for j, m in enumerate(members):
                    if m.checkpoint and not m.failed:
                        m.checkpoint(_snapshot(m, j, model, optimizer, step + 1, perm, sums, bad_step, seconds))
                raise Interrupted(epoch, step + 1, saved=members[0].checkpoint is not None)
        seconds = (time.perf_counter() - started) / len(members)
        _end_epoch(members, model, optimizer, data, epoch, steps, sums / n, bad_step, lrs, seconds,
                   teacher_logits is not None, checkpoint_every)
        if after_epoch:
            after_epoch(epoch)
    for j, m in enumerate(members):
        model.write_to(j, m.model)


def _end_epoch(members: list[Member], model: StackedModel, optimizer: StackedOptimizer, data: TensorData,
               epoch: int, steps: int, means: torch.Tensor, bad_step: torch.Tensor, lrs: list[float],
               seconds: float, with_teacher: bool, checkpoint_every: int) -> None:
    """Each member's schedule step, row, hooks and checkpoint, as `engine.fit` does at an epoch's end."""
    rows, bad = means.tolist(), bad_step.tolist()
    for j, m in enumerate(members):
        with warnings.catch_warnings():  # its torch optimiser only holds state: the stacked one took the steps
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            m.loop.scheduler.step()
        if m.failed:
            continue
        train_loss, ce, kd = rows[j]
        if not math.isfinite(train_loss):
            m.failed = (f"training loss became {train_loss} in epoch {epoch}, step {bad[j]} of {steps}; lower the "
                        f"learning rate (it is {m.recipe.lr:g}; try {m.recipe.lr / 10:g} or less)")
            continue
        model.write_to(j, m.model)
        row = {"epoch": epoch, "train_loss": train_loss, **({"ce": ce, "kd": kd} if with_teacher else {}),
               "test_acc": evaluate(m.model, data, data.x_test.device), "lr": lrs[j], "seconds": seconds}
        m.history.append(row)
        if m.on_epoch:
            m.on_epoch(row)
        if m.checkpoint and checkpoint_every > 0 and (epoch % checkpoint_every == 0 or epoch == m.recipe.epochs):
            m.checkpoint(_snapshot(m, j, model, optimizer))
