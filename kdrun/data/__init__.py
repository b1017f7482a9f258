"""Dataset registry: every dataset arrives as tensors that fit in (device) memory.

Small datasets (MNIST-1D, MNIST, CIFAR) are indexed batch by batch on the device rather
than fed sample by sample through a DataLoader; random augmentation, when a dataset has
it, is applied to whole batches on the device (see `TensorData.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from kdrun.errors import KdrunError
from kdrun.registry import Registry
from kdrun.runtime import memory_format

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TensorData:
    """Train and test tensors plus an optional batched, seeded, on-device augmentation."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: Optional[Augment] = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "TensorData":
        layout = memory_format(device, self.x_train.dim())
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        move_inputs = lambda t: t.to(device, memory_format=layout, non_blocking=True)  # noqa: E731
        return replace(self, x_train=move_inputs(self.x_train), y_train=move(self.y_train),
                       x_test=move_inputs(self.x_test), y_test=move(self.y_test))


def load_dataset(name: str, data_dir: str, download: bool, augment: bool, kwargs: dict[str, Any]) -> TensorData:
    """Build a registered dataset; `data_dir` is expanded and made absolute first."""
    root = Path(data_dir).expanduser().resolve()
    data = DATASETS.build(name, root=root, download=download, augment=augment, **kwargs)
    if len(data.x_train) == 0 or len(data.x_test) == 0:
        raise KdrunError(f"dataset '{name}' with these options has {len(data.x_train)} training and "
                         f"{len(data.x_test)} test examples; a run needs both, check dataset.kwargs")
    if augment and data.augment is None:
        raise KdrunError(f"dataset '{name}' has no random augmentation; set dataset.augment=false")
    return data


# Importing the modules registers their datasets.
from kdrun.data import fake, mnist1d, vision  # noqa: E402,F401
