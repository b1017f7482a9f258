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


def evaluate(model: nn.Module, data: Any, device: torch.device) -> float:
    """Test accuracy; on several ranks each evaluates its share of the test set and the counts are summed."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, device=device)  # correct, seen
    with torch.inference_mode(), autocast(device):
        for inputs, labels in data.test_batches(device):
            counts += torch.stack([(model(inputs).argmax(1) == labels).sum(), torch.tensor(len(labels), device=device)])
    model.train(was_training)
    correct, seen = all_sum(counts.clone())
    return (correct / seen).item()


def epoch_accuracy(model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
    """Test accuracy, and validation accuracy when the dataset holds a validation split."""
    val = getattr(data, "x_val", None)  # the whole split on every rank: it is small
    held_out = {"val_acc": (predict(model, val).argmax(1) == data.y_val).float().mean().item()} if val is not None else {}
    return {**held_out, "test_acc": evaluate(model, data, device)}
