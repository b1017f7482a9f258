"""`fake`: random inputs of any shape, labelled by a fixed random linear map.

Learnable (so accuracy moves) and instant (so smoke tests and benchmarks need no files).
Image-like shapes (C, H, W) get the CIFAR crop+flip augmentation, so the augmented
training path can be exercised without dataset files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdrun.data.augment import crop_flip_augment
from kdrun.data.base import TensorData, register_dataset


@register_dataset("fake")
def fake(root: Path, download: bool, augment: bool, shape: list[int] = (3, 32, 32), num_classes: int = 10,
         num_train: int = 512, num_test: int = 256, generator_seed: int = 0) -> TensorData:
    generator = torch.Generator().manual_seed(generator_seed)
    x = torch.randn(num_train + num_test, *shape, generator=generator)
    projection = torch.randn(x[0].numel(), num_classes, generator=generator)
    y = (x.flatten(1) @ projection).argmax(1)
    policy = crop_flip_augment(padding=4, flip=True) if augment and len(shape) == 3 else None
    return TensorData("fake", x[:num_train], y[:num_train], x[num_train:], y[num_train:], num_classes, policy)
