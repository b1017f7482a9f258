"""Top-1 and top-5 accuracy against a hand count on a 10-class set."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdrun.commands.record import history_summary
from kdrun.data.base import TensorData
from kdrun.train.evaluate import epoch_accuracy


def ranked(label: int, rank: int, classes: int = 10) -> torch.Tensor:
    """Logits where `label` holds place `rank` (1 = the highest) among `classes` distinct scores."""
    order = [c for c in range(classes) if c != label]
    order.insert(rank - 1, label)
    logits = torch.empty(classes)
    logits[order] = torch.linspace(9.0, 0.0, classes)
    return logits


def test_top1_and_top5_equal_a_hand_count_on_ten_classes():
    # Labels ranked 1st, 3rd, 5th, 6th and 10th by their logits: top-1 holds 1 of 5, top-5 holds 3 of 5.
    ranks, labels = [1, 3, 5, 6, 10], torch.tensor([4, 0, 9, 2, 7])
    x = torch.stack([ranked(int(label), rank) for label, rank in zip(labels, ranks)])
    val_x, val_y = x[:2], labels[:2]  # ranked 1st and 3rd: top-1 1 of 2, top-5 2 of 2
    data = TensorData("hand", x, labels, x, labels, 10, x_val=val_x, y_val=val_y)
    row = epoch_accuracy(nn.Identity(), data, torch.device("cpu"))  # the inputs are the logits
    exact = {"val_acc": 1 / 2, "val_top5": 2 / 2, "test_acc": 1 / 5, "test_top5": 3 / 5}
    assert row == pytest.approx(exact, abs=1e-7)  # test counts are divided in float32
    summary = history_summary([{"epoch": 1, "seconds": 0.1, **row}])
    assert summary["test_top5"] == summary["test_top5_at_best_val"] == row["test_top5"]


def test_fewer_than_five_classes_have_no_top5():
    x, labels = torch.eye(3), torch.tensor([0, 1, 1])
    row = epoch_accuracy(nn.Identity(), TensorData("three", x, labels, x, labels, 3), torch.device("cpu"))
    assert row == pytest.approx({"test_acc": 2 / 3}, abs=1e-7)
