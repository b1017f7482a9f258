"""How well a classifier does on a labelled set: accuracy, top-5, per-class accuracy, the confusion matrix
and its picture (for `kdrun evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdrun.core.files import write_atomic

TOP_K = 5


def scores(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Top-1 (and top-5 where there are at least 5 classes), per-class accuracy and the confusion matrix
    (rows: true class, columns: predicted)."""
    classes = logits.shape[1]
    predicted = logits.argmax(1)
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    seen = confusion.sum(1)
    result: dict[str, Any] = {"test_acc": (predicted == labels).float().mean().item(), "examples": len(labels)}
    if classes >= TOP_K:
        top = logits.topk(TOP_K, dim=1).indices
        result["top5_acc"] = (top == labels[:, None]).any(1).float().mean().item()
    result["per_class_acc"] = {name: (confusion[i, i] / seen[i]).item() if seen[i] else None
                               for i, name in enumerate(class_names)}
    result["confusion_matrix"] = confusion.tolist()
    return result


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path, title: str) -> Path:
    """The confusion matrix as a PNG, each row normalised to the true class's examples (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = torch.tensor(confusion, dtype=torch.float)
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    side = min(12.0, 3 + 0.35 * len(class_names))
    figure = Figure(figsize=(side, side * 0.85))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    if len(class_names) <= 30:  # beyond that, tick labels are unreadable
        axes.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize="small")
        axes.set_yticks(range(len(class_names)), class_names, fontsize="small")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize="medium")
    figure.tight_layout()
    write_atomic(path, lambda f: figure.savefig(f, dpi=110, format="png"))
    return path
