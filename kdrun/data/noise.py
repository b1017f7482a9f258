"""Symmetric label noise on the training set: how much do soft targets protect a student?

Exactly round(fraction * n) training labels, chosen uniformly at random, are replaced by a
different class drawn uniformly from the other K - 1 ("symmetric" noise, e.g. Patrini et al.
2017). The test set is never touched: accuracy is still measured against the true labels.
Seeded by its own seed, so every student and teacher of a sweep sees the same noisy set.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kdrun.core.errors import KdrunError
from kdrun.data.base import TensorData


def flip_labels(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """A copy of `labels` with round(fraction * n) of them moved to another class, uniformly."""
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    chosen = torch.randperm(n, generator=generator)[:round(fraction * n)]
    shift = torch.randint(1, num_classes, (len(chosen),), generator=generator)  # 1..K-1: never the same class
    noisy = labels.clone().cpu()
    noisy[chosen] = (noisy[chosen] + shift) % num_classes
    return noisy.to(labels.device)


def with_label_noise(data: TensorData, fraction: float, seed: int) -> TensorData:
    """`data` with noisy training labels (fraction 0 returns it unchanged)."""
    if fraction <= 0:
        return data
    if data.num_classes < 2:
        raise KdrunError(f"dataset.label_noise={fraction:g} needs at least 2 classes to flip labels between "
                         f"(dataset '{data.name}' has {data.num_classes}); set dataset.label_noise=0")
    return replace(data, y_train=flip_labels(data.y_train, fraction, data.num_classes, seed))
