"""The stacked model and optimiser: many students of one architecture as one flat (jobs, P) parameter tensor.

One forward and backward pass (batched matmuls for plain MLPs, `vmap` over `functional_call`
otherwise) serves every job; the optimiser applies torch's own AdamW/SGD update with per-job
learning rates and weight decays as tensors, so each job's step equals the one it takes alone
(kdrun.sweep.stacked trains a group with them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdrun.data.base import TensorData
from kdrun.train.evaluate import TOP5_FROM, topk_correct
from kdrun.train.recipe import Recipe, autocast

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which make_optimizer uses


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

    def accuracies(self, data: TensorData) -> list[dict[str, float]]:
        """Every job's top-1 test accuracy (`test_acc`), and top-5 (`test_top5`) with 5 classes or more;
        one pass over the test set for all."""
        top1 = top5 = 0
        for inputs, labels in data.test_batches(data.x_test.device):
            logits = self.predict(inputs)
            top1, top5 = top1 + topk_correct(logits, labels, 1), top5 + topk_correct(logits, labels, 5)
        rows = [{"test_acc": a} for a in (top1 / data.test_size).tolist()]
        if data.num_classes >= TOP5_FROM:
            for row, b in zip(rows, (top5 / data.test_size).tolist()):
                row["test_top5"] = b
        return rows

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
