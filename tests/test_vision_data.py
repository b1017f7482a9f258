"""Torchvision datasets through the kdrun registry, from small files in the real on-disk formats,
and the batched crop+flip augmentation."""

from __future__ import annotations

import os
import pickle
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets.cifar
import torchvision.datasets.utils

from kdrun.core.errors import KdrunError
from kdrun.data import load_dataset
from kdrun.data.augment import crop_flip
from kdrun.data.vision import CIFAR10, CIFAR100, FASHION_MNIST, MNIST

SPECS = {spec.name: spec for spec in (MNIST, FASHION_MNIST, CIFAR10, CIFAR100)}


def normalised(images: np.ndarray, spec) -> torch.Tensor:
    """The reference: uint8 (N, C, H, W) -> (x / 255 - mean) / std, computed independently."""
    mean = np.array(spec.mean).reshape(1, -1, 1, 1)
    std = np.array(spec.std).reshape(1, -1, 1, 1)
    return torch.from_numpy((images / 255.0 - mean) / std).float()


# --- writers for the real formats ------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun): magic 0x0000 08 <ndim> (uint8 data), big-endian int32 sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(folder: Path, num_train: int, num_test: int, rng: np.random.Generator) -> dict:
    """<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, as torchvision's MNIST reads them."""
    arrays = {}
    for split, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / "raw" / f"{split}-labels-idx1-ubyte", labels)
        arrays[split] = (images[:, None], labels)
    return arrays


def write_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def cifar_batch(n: int, num_classes: int, label_key: str, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """One CIFAR python batch: rows of 3072 bytes (1024 red, 1024 green, 1024 blue, row-major)."""
    rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    return {"data": rows, label_key: labels}, rows.reshape(n, 3, 32, 32)


def write_cifar10(folder: Path, per_batch: int, num_test: int, rng: np.random.Generator) -> dict:
    base = folder / "cifar-10-batches-py"
    train_images, train_labels = [], []
    for i in range(1, 6):
        entry, images = cifar_batch(per_batch, 10, "labels", rng)
        write_pickle(base / f"data_batch_{i}", entry)
        train_images.append(images)
        train_labels += entry["labels"]
    test, test_images = cifar_batch(num_test, 10, "labels", rng)
    write_pickle(base / "test_batch", test)
    write_pickle(base / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return {"train": (np.concatenate(train_images), train_labels), "test": (test_images, test["labels"])}


def write_cifar100(folder: Path, num_train: int, num_test: int, rng: np.random.Generator) -> dict:
    base = folder / "cifar-100-python"
    arrays = {}
    for split, n in (("train", num_train), ("test", num_test)):
        entry, images = cifar_batch(n, 100, "fine_labels", rng)
        entry["coarse_labels"] = [label // 5 for label in entry["fine_labels"]]
        write_pickle(base / split, entry)
        arrays[split] = (images, entry["fine_labels"])
    write_pickle(base / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                                 "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return arrays


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision's CIFAR checks each file against the md5 of the real release, which files written
    here cannot match. Replace only that check, with torchvision's own existence-only check
    (`check_integrity` without an md5); everything else, unpickling included, is torchvision's code."""
    real = torchvision.datasets.utils.check_integrity
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: real(path))


def check_loaded(data, spec, arrays: dict, splits: tuple[str, str], num_classes: int, augment: bool) -> None:
    for (x, y), split in zip(((data.x_train, data.y_train), (data.x_test, data.y_test)), splits):
        images, labels = arrays[split]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(labels), len(spec.mean), *images.shape[2:])
        torch.testing.assert_close(x, normalised(images, spec))
        assert y.tolist() == [int(label) for label in labels]
    assert data.num_classes == num_classes and data.name == spec.name
    assert (data.augment is not None) == augment


# --- loading through the registry ------------------------------------------------------------

@pytest.mark.parametrize("name, torchvision_folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_loads_from_idx_files(tmp_path, name, torchvision_folder):
    arrays = write_mnist(tmp_path / name / torchvision_folder, num_train=12, num_test=5, rng=np.random.default_rng(0))
    data = load_dataset(name, str(tmp_path), download=False, augment=False, kwargs={})
    check_loaded(data, SPECS[name], arrays, ("train", "t10k"), num_classes=10, augment=False)
    assert data.input_shape == (1, 28, 28)


def test_cifar10_loads_all_five_batches(tmp_path, no_md5):
    arrays = write_cifar10(tmp_path / "cifar10", per_batch=3, num_test=4, rng=np.random.default_rng(1))
    data = load_dataset("cifar10", str(tmp_path), download=False, augment=True, kwargs={})
    check_loaded(data, CIFAR10, arrays, ("train", "test"), num_classes=10, augment=True)
    assert len(data.x_train) == 15 and data.input_shape == (3, 32, 32)


def test_cifar100_loads_fine_labels(tmp_path, no_md5):
    arrays = write_cifar100(tmp_path / "cifar100", num_train=10, num_test=4, rng=np.random.default_rng(2))
    data = load_dataset("cifar100", str(tmp_path), download=False, augment=False, kwargs={})
    check_loaded(data, CIFAR100, arrays, ("train", "test"), num_classes=100, augment=False)


def test_cifar_without_md5_patch_rejects_files_that_are_not_the_release(tmp_path):
    """The md5 check is real: the same files fail it when it is left in place."""
    write_cifar100(tmp_path / "cifar100", num_train=2, num_test=2, rng=np.random.default_rng(3))
    with pytest.raises(KdrunError, match="cifar100 not found under"):
        load_dataset("cifar100", str(tmp_path), download=False, augment=False, kwargs={})


def test_augmented_cifar_pads_with_black(tmp_path, no_md5):
    """Padding is a zero pixel, normalised: what torchvision's RandomCrop(32, padding=4) adds."""
    write_cifar10(tmp_path / "cifar10", per_batch=1, num_test=1, rng=np.random.default_rng(4))
    data = load_dataset("cifar10", str(tmp_path), download=False, augment=True, kwargs={})
    out = data.augment(torch.full((64, 3, 32, 32), 10.0), torch.Generator().manual_seed(0))
    padding = out[:, 0] != 10.0  # (N, H, W): where a crop window reached into the padding
    assert padding.any()
    black = normalised(np.zeros((1, 3, 1, 1)), CIFAR10).view(1, 3)
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[padding], black.expand(int(padding.sum()), 3))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_missing_dataset_names_the_folder_and_the_fix(tmp_path, name):
    with pytest.raises(KdrunError) as caught:
        load_dataset(name, str(tmp_path), download=False, augment=False, kwargs={})
    message = str(caught.value)
    assert "\n" not in message
    assert f"not found under {tmp_path / name} " in message
    assert "dataset.download=true" in message and f"{name}/{SPECS[name].layout}" in message
    assert not (tmp_path / name).exists()  # looking must not create anything


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_failed_download_is_one_line(tmp_path, monkeypatch, name):
    """No network, simulated below torchvision's real download code: every URL open fails."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (simulated)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(KdrunError) as caught:
        load_dataset(name, str(tmp_path), download=True, augment=False, kwargs={})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"could not download {name} into {tmp_path / name} ")
    assert "no network (simulated)" in message


def test_unknown_option_is_rejected(tmp_path):
    with pytest.raises(KdrunError, match="does not accept these options"):
        load_dataset("cifar10", str(tmp_path), download=False, augment=False, kwargs={"subset": 10})


# --- the augmentation itself -------------------------------------------------------------------

def pattern(n: int, channels: int, size: int) -> torch.Tensor:
    """Images whose pixels are all distinct and non-zero, so a crop's position can be read back."""
    return torch.arange(1, n * channels * size * size + 1, dtype=torch.float32).view(n, channels, size, size)


def candidates(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Every crop of each zero-padded image, then every mirrored crop: (N, 2 * (2p+1)^2, C, H, W)."""
    n, channels, size, _ = x.shape
    windows = F.pad(x, (padding,) * 4).unfold(2, size, 1).unfold(3, size, 1)  # (N, C, 2p+1, 2p+1, H, W)
    crops = windows.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, channels, size, size)
    return torch.cat([crops, crops.flip(-1)], dim=1)


def matched_candidate(out: torch.Tensor, x: torch.Tensor, padding: int) -> list[int]:
    """For each sample, the index of the one crop/mirror candidate it equals (asserting there is one)."""
    found = []
    for chunk_out, chunk_x in zip(out.split(500), x.split(500)):
        hits = (candidates(chunk_x, padding) == chunk_out[:, None]).flatten(2).all(2)  # (chunk, candidates)
        assert hits.sum(1).eq(1).all(), "an output is not a zero-filled crop (shift <= padding) of its input or mirror"
        found += hits.int().argmax(1).tolist()
    return found


def test_crop_flip_keeps_shape_dtype_and_is_seeded():
    x = torch.randn(32, 3, 16, 16, dtype=torch.float64)

    def run(seed: int) -> torch.Tensor:
        return crop_flip(x, torch.Generator().manual_seed(seed), padding=4, flip=True)

    out = run(0)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(out, run(0))
    assert not torch.equal(out, run(1))


def test_crop_flip_outputs_are_shifted_crops_and_mirrors_drawn_uniformly():
    x = pattern(3000, 1, 8)
    padding = 4
    found = matched_candidate(crop_flip(x, torch.Generator().manual_seed(0), padding, flip=True), x, padding)
    positions = (2 * padding + 1) ** 2
    assert set(found) == set(range(2 * positions)), "some crop offset or mirror never occurs"
    mirrored = sum(index >= positions for index in found) / len(found)
    assert 0.45 < mirrored < 0.55


def test_crop_without_flip_never_mirrors_and_uses_the_fill():
    x = pattern(200, 2, 8)
    out = crop_flip(x, torch.Generator().manual_seed(0), padding=2, flip=False, fill=(-1.0, -2.0))
    assert torch.equal(out[:, 0] < 0, out[:, 1] < 0)  # one crop window for all channels
    assert set(out[:, 0][out[:, 0] < 0].tolist()) == {-1.0} and set(out[:, 1][out[:, 1] < 0].tolist()) == {-2.0}
    unfilled = out.clamp(min=0)  # the same crops with zero fill, to compare with the zero-padded candidates
    found = matched_candidate(unfilled, x, padding=2)
    assert max(found) < 25 and len(set(found)) == 25


def test_fake_images_get_crop_flip_and_signals_get_none(tmp_path):
    images = load_dataset("fake", str(tmp_path), download=False, augment=True,
                          kwargs={"shape": [3, 8, 8], "num_train": 16, "num_test": 4})
    out = images.augment(images.x_train, torch.Generator().manual_seed(0))
    assert out.shape == images.x_train.shape and not torch.equal(out, images.x_train)
    with pytest.raises(KdrunError, match="no random augmentation"):
        load_dataset("fake", str(tmp_path), download=False, augment=True, kwargs={"shape": [1, 40]})
    assert os.listdir(tmp_path) == []
