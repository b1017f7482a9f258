"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through torchvision's own dataset classes.

torchvision finds, verifies (md5 for CIFAR) and parses the files; kdrun then takes each
split's whole `.data`/`.targets` arrays at once, without per-sample transforms, and
normalises them into float32 (N, C, H, W) tensors that are indexed batch by batch on the
device. Nothing is cached besides torchvision's own files under `<data_dir>/<name>/`.
Training-time augmentation is the usual random crop (+ flip for CIFAR), batched on the
device, padding with black as torchvision's `RandomCrop(size, padding)` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from kdrun.core.errors import KdrunError
from kdrun.data.augment import crop_flip_augment
from kdrun.data.base import TensorData, register_dataset

# What torchvision raises for missing or corrupted files and for failed downloads
# (urllib's URLError is an OSError); malformed idx files raise the other three.
_TORCHVISION_ERRORS = (RuntimeError, OSError, ValueError, TypeError, KeyError)


@dataclass(frozen=True)
class VisionSpec:
    """How one torchvision dataset is found on disk, normalised and augmented."""

    name: str
    torchvision_class: str
    layout: str  # what torchvision expects inside <data_dir>/<name>/
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool

    @property
    def black(self) -> tuple[float, ...]:
        """A zero pixel after normalisation: the padding torchvision's RandomCrop adds."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))


MNIST = VisionSpec("mnist", "MNIST", "MNIST/raw/", (0.1307,), (0.3081,), crop_padding=2, flip=False)
FASHION_MNIST = VisionSpec("fashion_mnist", "FashionMNIST", "FashionMNIST/raw/", (0.2860,), (0.3530,),
                           crop_padding=2, flip=False)
CIFAR10 = VisionSpec("cifar10", "CIFAR10", "cifar-10-batches-py/", (0.4914, 0.4822, 0.4465),
                     (0.2470, 0.2435, 0.2616), crop_padding=4, flip=True)
# The constants RepDistiller and mdistiller normalise with, so their published teachers see what they were trained on.
CIFAR100 = VisionSpec("cifar100", "CIFAR100", "cifar-100-python/", (0.5071, 0.4867, 0.4408),
                      (0.2675, 0.2565, 0.2761), crop_padding=4, flip=True)


def load_vision(spec: VisionSpec, root: Path, download: bool, augment: bool) -> TensorData:
    """Both splits as normalised tensors, plus the crop(+flip) augmentation when asked for."""
    train, test = _open(spec, root / spec.name, download)
    x_train, y_train = _tensors(spec, train)
    x_test, y_test = _tensors(spec, test)
    policy = crop_flip_augment(spec.crop_padding, spec.flip, fill=spec.black) if augment else None
    return TensorData(spec.name, x_train, y_train, x_test, y_test, num_classes=len(train.classes), augment=policy,
                      normalisation=(spec.mean, spec.std))


for _spec in (MNIST, FASHION_MNIST, CIFAR10, CIFAR100):  # dataset=mnist|fashion_mnist|cifar10|cifar100
    register_dataset(_spec.name)(partial(load_vision, _spec))


def _open(spec: VisionSpec, folder: Path, download: bool):
    """torchvision's train and test datasets; its exceptions become one KdrunError line."""
    import torchvision.datasets  # deferred: only these datasets need torchvision

    dataset_class = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        return dataset_class(folder, train=True, download=download), dataset_class(folder, train=False)
    except _TORCHVISION_ERRORS as error:
        # torchvision's messages span lines and end with hints about its own API: keep the first sentence.
        reason = " ".join(str(error).split()).split(". ")[0]
        if download:
            raise KdrunError(f"could not download {spec.name} into {folder} ({reason}); check the network, or copy "
                             f"{spec.layout} there by hand and pass dataset.download=false") from None
        raise KdrunError(f"{spec.name} not found under {folder} ({reason}); pass dataset.download=true or point "
                         f"dataset.data_dir at a folder holding {spec.name}/{spec.layout}") from None


def _tensors(spec: VisionSpec, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-split uint8 images (N, H, W) or (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    images = torch.as_tensor(dataset.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    x = images.float().div_(255).sub_(mean).div_(std)
    return x, torch.as_tensor(dataset.targets, dtype=torch.long)
