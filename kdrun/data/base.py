"""The dataset registry, and the two ways a dataset reaches the training loop.

Which way is decided in one place, by the type a registered builder returns:
- `TensorData` (MNIST-1D, MNIST, CIFAR, fake): the whole set fits in (device) memory and is
  indexed batch by batch there instead of fed sample by sample through a DataLoader;
  random augmentation, when a dataset has it, runs on whole batches on the device.
- `kdrun.data.stream.StreamingData` (image folders, ImageNet): never loaded whole; DataLoader
  workers decode and augment the images (`dataset=image_folder`, `dataset=imagenet`).
Both give the loop the same things: an epoch's batches for this rank (`train_batches`), the
test batches (`test_batches`), and un-augmented training inputs for teacher statistics
(`teacher_reference`). Under torchrun each rank takes a strided share of every global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from kdrun.core.distributed import context
from kdrun.core.errors import ConfigError, KdrunError
from kdrun.core.registry import Registry
from kdrun.core.runtime import memory_format

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# A training batch for this rank: sample indices, inputs, labels.
Batch = tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]
EVAL_BATCH = 1024


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches, the same on every rank: the order of all samples and each step's global batch size."""

    epoch: int
    order: torch.Tensor  # a permutation of the training indices
    sizes: tuple[int, ...]  # global batch size of each step
    first_step: int  # > 0 when an interrupted epoch continues
    seed: int  # the run's seed (streamed augmentation derives each sample's draw from it)

    def offset(self, step: int) -> int:
        """Position in `order` where `step` starts."""
        return sum(self.sizes[:step])


def batch_sizes(n: int, batch_size: int, world_size: int) -> tuple[int, ...]:
    """Global batch sizes of one epoch. On several ranks a last batch smaller than the number of ranks is
    dropped (some rank would get no sample), so every step has work on every rank."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    if world_size > 1 and sizes and sizes[-1] < world_size:
        sizes.pop()
    return tuple(sizes)


@dataclass(frozen=True)
class TensorData:
    """Train and test tensors, an optional validation split held out of train (`holdout`), and an
    optional batched, seeded, on-device augmentation."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: Optional[Augment] = None
    x_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None
    replayable: bool = False  # each sample's augmentation drawn from (run seed, epoch, index): see `with_replay`
    # (mean, std) per channel the inputs were normalised with; None: taken as they are (a model's view maps from it)
    normalisation: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def train_size(self) -> int:
        return len(self.x_train)

    @property
    def test_size(self) -> int:
        return len(self.x_test)

    @property
    def static_inputs(self) -> bool:
        """The same training inputs every epoch (no random augmentation): a teacher-logit cache is valid."""
        return self.augment is None

    def train_batches(self, plan: EpochPlan, device: torch.device, augment_rng: torch.Generator) -> Iterator[Batch]:
        """Index each global batch on the device, augment it whole (so every rank draws the same numbers as
        one process would), then keep this rank's share."""
        ctx = context()
        batches = plan.order.to(device).split(list(plan.sizes) + [len(plan.order) - sum(plan.sizes)])
        for step in range(plan.first_step, len(plan.sizes)):
            index = batches[step]
            inputs = self.x_train[index]
            if self.augment is not None and self.replayable:
                inputs = self.augment.replay(inputs, index, plan.seed, plan.epoch)
            elif self.augment is not None:
                inputs = self.augment(inputs, augment_rng)
            yield ctx.shard(index), ctx.shard(inputs), ctx.shard(self.y_train[index])

    def with_replay(self) -> "TensorData":
        """This data with each sample's augmentation drawn from its own seed (run seed, epoch, index) instead of
        the loop's generator, so a teacher-output store can draw the same crop again (`replayed_inputs`)."""
        if self.augment is not None and not hasattr(self.augment, "replay"):
            raise KdrunError(f"dataset '{self.name}' has an augmentation that cannot be replayed per sample; "
                             "use teacher.outputs=live")
        return replace(self, replayable=True)

    def replayed_inputs(self, run_seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """The training inputs `index` exactly as a replayable run seeded `run_seed` shows them in `epoch`."""
        inputs = self.x_train[index]
        return inputs if self.augment is None else self.augment.replay(inputs, index, run_seed, epoch)

    def replayed_batches(self, run_seed: int, epoch: int, chunks: list[list[int]],
                         device: torch.device) -> Iterator[torch.Tensor]:
        """`replayed_inputs` for each chunk of sample indices."""
        for chunk in chunks:
            yield self.replayed_inputs(run_seed, epoch, torch.tensor(chunk, device=self.x_train.device))

    def augmentation_recipe(self) -> str:
        """What the training augmentation is, in words that change when it does (a store key)."""
        return repr(self.augment) if self.augment is not None else "none"

    def test_batches(self, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ctx = context()
        yield from zip(ctx.shard(self.x_test).split(EVAL_BATCH), ctx.shard(self.y_test).split(EVAL_BATCH))

    def teacher_reference(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-augmented training inputs and labels for teacher statistics and the gradient probe: all of them
        (already on `device`)."""
        return self.x_train, self.y_train

    def to(self, device: torch.device) -> "TensorData":
        layout = memory_format(device, self.x_train.dim())
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        move_inputs = lambda t: t.to(device, memory_format=layout, non_blocking=True)  # noqa: E731
        held_out = {} if self.x_val is None else {"x_val": move_inputs(self.x_val), "y_val": move(self.y_val)}
        return replace(self, x_train=move_inputs(self.x_train), y_train=move(self.y_train),
                       x_test=move_inputs(self.x_test), y_test=move(self.y_test), **held_out)


def holdout(data: TensorData, fraction: float, seed: int) -> TensorData:
    """Hold a seeded `fraction` of the training set out as a validation set (model selection without
    looking at test). The kept training examples stay in their original order."""
    n = len(data.x_train)
    held = round(fraction * n)
    if not 1 <= held < n:
        raise ConfigError(f"dataset.val_split={fraction:g} holds out {held} of {n} training examples; a validation "
                          f"set needs at least one and training keeps one: use a value in [{1 / n:.2g}, {(n - 1) / n:.4g}], "
                          "or 0 for none")
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:held]
    keep = torch.ones(n, dtype=torch.bool)
    keep[chosen] = False
    val = chosen.sort().values
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep],
                   x_val=data.x_train[val], y_val=data.y_train[val])


def load_dataset(name: str, data_dir: str, download: bool, augment: bool, kwargs: dict[str, Any],
                 image_size: Optional[int] = None, workers: int = 0) -> Any:
    """Build a registered dataset; `data_dir` is expanded and made absolute first.

    `image_size` (the side of the training crop) only streamed datasets take: an in-memory one refuses it
    in one line. `workers` is how many DataLoader processes a streamed dataset uses (in-memory ones have none).
    """
    root = Path(data_dir).expanduser().resolve()
    sized = {} if image_size is None else {"image_size": image_size}
    data = DATASETS.build(name, root=root, download=download, augment=augment, **kwargs, **sized)
    if data.train_size == 0 or data.test_size == 0:
        raise KdrunError(f"dataset '{name}' with these options has {data.train_size} training and "
                         f"{data.test_size} test examples; a run needs both, check dataset.kwargs")
    if isinstance(data, TensorData):
        if augment and data.augment is None:
            raise KdrunError(f"dataset '{name}' has no random augmentation; set dataset.augment=false")
        return data
    return data.with_workers(workers)
