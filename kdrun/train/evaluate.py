"""A model's logits and accuracy, in eval and inference mode; on several ranks each takes its share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdrun.core.distributed import all_sum
from kdrun.train.recipe import autocast


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for `x` in eval and inference mode, as an ordinary (autograd-usable) tensor."""
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(x.device):
        logits = torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits.clone()


TOP5_FROM = 5  # classes a task needs before top-5 accuracy means something (with fewer it is always 1)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many labels are among the k highest logits (over the last dim; leading dims, e.g. jobs, kept).
    Top-1 is argmax's pick, so ties go to the first class as they always have."""
    top = logits.argmax(-1, keepdim=True) if k == 1 else logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(-1).sum(-1)


def test_accuracies(model: nn.Module, data: Any, device: torch.device) -> tuple[float, float]:
    """Top-1 and top-5 test accuracy; on several ranks each evaluates its share of the test set and the counts
    are summed."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, device=device)  # top-1 correct, top-5 correct, seen
    with torch.inference_mode(), autocast(device):
        for inputs, labels in data.test_batches(device):
            logits = model(inputs)
            counts += torch.stack([topk_correct(logits, labels, 1), topk_correct(logits, labels, 5),
                                   torch.tensor(len(labels), device=device)])
    model.train(was_training)
    top1, top5, seen = all_sum(counts.clone())
    return (top1 / seen).item(), (top5 / seen).item()


def evaluate(model: nn.Module, data: Any, device: torch.device) -> float:
    """Top-1 test accuracy."""
    return test_accuracies(model, data, device)[0]


def epoch_accuracy(model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
    """Test accuracy, and validation accuracy when the dataset holds a validation split; top-5 too (`test_top5`,
    `val_top5`) with 5 classes or more."""
    top5 = data.num_classes >= TOP5_FROM
    row: dict[str, float] = {}
    val = getattr(data, "x_val", None)  # the whole split on every rank: it is small
    if val is not None:
        logits = predict(model, val)
        row["val_acc"] = topk_correct(logits, data.y_val, 1).item() / len(val)
        if top5:
            row["val_top5"] = topk_correct(logits, data.y_val, 5).item() / len(val)
    row["test_acc"], test_top5 = test_accuracies(model, data, device)
    return {**row, **({"test_top5": test_top5} if top5 else {})}
