"""Datasets too big for memory: image folders and ImageNet, decoded and augmented by DataLoader workers.

`dataset=image_folder dataset.data_dir=DIR` reads `DIR/train/<class>/*` and `DIR/val/<class>/*`
(torchvision's `ImageFolder`); `dataset=imagenet` reads torchvision's `ImageNet` layout
(`DIR/train/<wnid>/*.JPEG`, `DIR/val/<wnid>/*.JPEG`, `DIR/meta.bin` or the devkit archive).
Nothing is loaded whole. Training uses the standard RandomResizedCrop + horizontal flip,
evaluation Resize(size * 256/224) + CenterCrop(size), both normalised with ImageNet's mean/std.

Seeded, resumable and replayable: each sample's random crop and flip are drawn from a seed that
depends only on the run's seed, the epoch and the sample's index. So augmentation does not depend
on the number of workers or ranks, an interrupted epoch continues with exactly the batches it
would have had, and a teacher-output store can draw any sample's crop again (`replayed_batches`).
The batch order is the engine's (`EpochPlan`); the workers live as long as the run (`persistent_workers`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from kdrun.core.distributed import context
from kdrun.core.errors import KdrunError, first_line
from kdrun.core.jobenv import usable_cpus
from kdrun.core.runtime import memory_format
from kdrun.data.base import EVAL_BATCH, Batch, EpochPlan, register_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_SAMPLES = 2048  # training images (un-augmented) behind teacher statistics and the gradient probe


def sample_seed(run_seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random transform: a function of which sample and epoch, not of who loads it."""
    return ((run_seed * 1_000_003 + epoch) * 10_000_000_019 + index) % (2 ** 63)


def transforms(image_size: int, augment: bool) -> tuple[Any, Any]:
    """(training transform, evaluation transform): the torchvision ImageNet recipe at `image_size`."""
    from torchvision import transforms as T

    normalise = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    evaluation = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), *normalise])
    if not augment:
        return evaluation, evaluation
    return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *normalise]), evaluation


# Every image read is bounded: a regular file (a FIFO would block for ever) of at most this size, decoded to at
# most PIL's own pixel limit (beyond it PIL raises DecompressionBombError instead of exhausting memory).
MAX_IMAGE_BYTES = 256 << 20


def regular_image(path: str) -> bool:
    """ImageFolder's `is_valid_file`: an image by its extension, and a regular file (not a FIFO, socket, device)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        return path.lower().endswith(IMG_EXTENSIONS) and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_image(path: str) -> Any:
    """One image as RGB, or a one-line error naming its path and why it cannot be used."""
    from PIL import Image

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise KdrunError(f"{path} is not a regular file (a FIFO, socket or device); remove it from the dataset")
        if info.st_size > MAX_IMAGE_BYTES:
            raise KdrunError(f"{path} is {info.st_size >> 20} MiB, over the {MAX_IMAGE_BYTES >> 20} MiB limit for "
                             "one image; shrink or remove it")
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise KdrunError(f"cannot read image {path} ({type(error).__name__}: {first_line(error)}); "
                         "replace or remove it") from None


@contextmanager
def worker_errors_named() -> Iterator[None]:
    """A kdrun error raised inside a DataLoader worker arrives wrapped in the worker's traceback: keep its line."""
    try:
        yield
    except Exception as error:
        text, marker = str(error), "KdrunError: "
        if not (text.startswith("Caught KdrunError in DataLoader worker") and marker in text):
            raise
        raise KdrunError(text.rsplit(marker, 1)[1].strip().splitlines()[0]) from None


class SeededSamples(Dataset):
    """`samples[(index, seed)]`: one image, transformed with torch's generator seeded by `seed`.

    torchvision's transforms draw from torch's global generator; it is forked around each draw,
    so loading in the main process (workers=0) leaves the run's own random state untouched.
    """

    def __init__(self, folder: Any, transform: Any) -> None:
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.folder.samples[index]
        image = read_image(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class PlannedBatches:
    """A batch sampler whose batches are set before each pass (the loader's workers persist across passes)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamingData:
    """A dataset read from disk batch by batch; the same interface the loop uses for `TensorData`."""

    static_inputs = False  # no teacher-logit cache: the teacher runs on every (augmented) batch
    normalisation = (IMAGENET_MEAN, IMAGENET_STD)  # what a model's view maps from (kdrun.models.views)

    def __init__(self, name: str, train: Any, test: Any, image_size: int, augment: bool, workers: int = 0) -> None:
        self.name, self.image_size, self.augment, self.workers = name, image_size, augment, workers
        train_transform, eval_transform = transforms(image_size, augment)
        self.train = SeededSamples(train, train_transform)
        self.train_plain = SeededSamples(train, eval_transform)
        self.test = SeededSamples(test, eval_transform)
        self.num_classes = len(train.classes)
        self._loaders: dict[str, tuple[DataLoader, PlannedBatches]] = {}
        self._reference: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # loaded once per device

    def with_workers(self, workers: int) -> "StreamingData":
        """At most one worker per CPU this process may use (affinity, cgroup quota, SLURM, its share of a torchrun
        node: kdrun.core.jobenv.usable_cpus): more only queue for the same cores."""
        self.workers = min(workers, usable_cpus()[0])
        return self

    def to(self, device: torch.device) -> "StreamingData":
        return self  # batches move to the device as they arrive

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)

    def _loader(self, split: str, device: torch.device) -> tuple[DataLoader, PlannedBatches]:
        if split not in self._loaders:
            planned = PlannedBatches()
            samples = {"train": self.train, "train_plain": self.train_plain, "test": self.test}[split]
            loader = DataLoader(samples, batch_sampler=planned, num_workers=self.workers,
                                pin_memory=device.type == "cuda",
                                persistent_workers=self.workers > 0 and split != "train_plain")  # used once
            self._loaders[split] = (loader, planned)
        return self._loaders[split]

    def _stream(self, split: str, batches: list[list[tuple[int, int]]],
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader, planned = self._loader(split, device)
        planned.batches = batches
        layout = memory_format(device, 4)
        with worker_errors_named():
            for inputs, labels in loader:
                yield (inputs.to(device, memory_format=layout, non_blocking=True),
                       labels.to(device, non_blocking=True))

    def train_batches(self, plan: EpochPlan, device: torch.device, augment_rng: Optional[torch.Generator]
                      ) -> Iterator[Batch]:
        ctx, order = context(), plan.order.tolist()
        batches = []
        for step in range(plan.first_step, len(plan.sizes)):
            start = plan.offset(step)
            chosen = order[start:start + plan.sizes[step]]
            batch = [(index, sample_seed(plan.seed, plan.epoch, index)) for index in chosen]
            batches.append(ctx.shard(batch))
        for batch, (inputs, labels) in zip(batches, self._stream("train", batches, device)):
            yield torch.tensor([index for index, _ in batch], device=device), inputs, labels

    def with_replay(self) -> "StreamingData":
        """Already replayable: every sample's crop comes from (run seed, epoch, index)."""
        return self

    def replayed_batches(self, run_seed: int, epoch: int, chunks: list[list[int]],
                         device: torch.device) -> Iterator[torch.Tensor]:
        """The training inputs of each chunk of sample indices exactly as a run seeded `run_seed` shows them
        in `epoch` (through the training loader's workers: call it between epochs, not during one)."""
        batches = [[(index, sample_seed(run_seed, epoch, index)) for index in chunk] for chunk in chunks]
        for inputs, _ in self._stream("train", batches, device):
            yield inputs

    def augmentation_recipe(self) -> str:
        """The training transform in torchvision's words (sizes, scales, flip): a store key changes with it."""
        return repr(self.train.transform)

    def train_fingerprint(self) -> str:
        """What the training images are, in 16 hex digits: each file's path, size and modification time."""
        digest = hashlib.sha256(repr(self.train.folder.classes).encode())
        for path, label in self.train.folder.samples:
            info = os.stat(path)
            digest.update(f"{path}:{label}:{info.st_size}:{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def test_batches(self, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mine = context().shard([(index, 0) for index in range(self.test_size)])
        yield from self._stream("test", [mine[i:i + EVAL_BATCH] for i in range(0, len(mine), EVAL_BATCH)], device)

    def teacher_reference(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-augmented training images for teacher statistics and the gradient probe: a fixed random
        sample of `REFERENCE_SAMPLES` (a pass over all of ImageNet would cost an epoch)."""
        if str(device) not in self._reference:
            chosen = torch.randperm(self.train_size, generator=torch.Generator().manual_seed(0))[:REFERENCE_SAMPLES]
            keys = [(index, 0) for index in chosen.tolist()]
            pairs = list(self._stream("train_plain", [keys[i:i + 256] for i in range(0, len(keys), 256)], device))
            self._reference[str(device)] = torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
        return self._reference[str(device)]


def _folder(cls: Any, where: Path, what: str, **kwargs: Any) -> Any:
    try:
        return cls(str(where), **kwargs)
    except (FileNotFoundError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:160]
        raise KdrunError(f"{what} not found or empty under {where} ({reason}); point dataset.data_dir at it") from None


def _check_classes(train: Any, test: Any, root: Path) -> None:
    if train.classes != test.classes:
        raise KdrunError(f"{root}/train and {root}/val hold different classes ({len(train.classes)} vs "
                         f"{len(test.classes)}); both need the same <class> subfolders")


def folder_fingerprint(root: Path) -> str:
    """What an image folder holds, in 16 hex digits: its splits' class names and every file's name, size and
    modification time. A teacher trained on the folder is stored under it, so replacing the images at the
    same path (even with as many classes) gives a new teacher, never the old one."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for folder, dirs, files in sorted(os.walk(root / split)):
            dirs.sort()
            for name in sorted(files):
                info = os.stat(os.path.join(folder, name))
                digest.update(f"{os.path.relpath(folder, root)}/{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@register_dataset("image_folder")
def image_folder(root: Path, download: bool, augment: bool, image_size: int = 224) -> StreamingData:
    """Any `DIR/{train,val}/<class>/<image>` tree (torchvision's ImageFolder: jpg, png, ...)."""
    from torchvision.datasets import ImageFolder

    train = _folder(ImageFolder, root / "train", "an image folder (DIR/train/<class>/<image>)",
                    is_valid_file=regular_image)
    test = _folder(ImageFolder, root / "val", "an image folder (DIR/val/<class>/<image>)", is_valid_file=regular_image)
    _check_classes(train, test, root)
    return StreamingData("image_folder", train, test, image_size, augment)


@register_dataset("imagenet")
def imagenet(root: Path, download: bool, augment: bool, image_size: int = 224) -> StreamingData:
    """ILSVRC-2012 in torchvision's layout; torchvision parses the devkit into meta.bin on first use."""
    from torchvision.datasets import ImageNet

    what = "ImageNet (DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG, DIR/meta.bin or the devkit .tar.gz)"
    train = _folder(ImageNet, root, what, split="train")
    test = _folder(ImageNet, root, what, split="val")
    return StreamingData("imagenet", train, test, image_size, augment)
