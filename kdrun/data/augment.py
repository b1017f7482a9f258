"""Batched, seeded random augmentation that runs where the batch already is (CPU or GPU).

One gather per batch replaces a per-sample PIL pipeline: pad once, then read each
sample's crop window (and, for a flip, its columns backwards). All randomness comes
from the caller's generator, which lives on the batch's device, so a seed reproduces the
exact sequence of augmented batches; or, replayed (`CropFlip.replay`), from each sample's own
seed derived from (run seed, epoch, index), so one sample's crop can be drawn again alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

Fill = Union[float, Sequence[float]]


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int, flip: bool, fill: Fill = 0.0) -> torch.Tensor:
    """Random crop of the input size from `x` padded by `padding` on each side, then a coin-flip
    horizontal mirror per sample (when `flip`). `fill` is the padding value, one per channel or one
    for all; it equals torchvision's `RandomCrop(size, padding)` when it is the normalised black."""
    n = len(x)
    top, left = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator, device=x.device)
    mirrored = torch.rand(n, 1, generator=generator, device=x.device) < 0.5 if flip else None
    return _crop(x, top, left, mirrored, padding, fill)


def replayed_crop_flip(x: torch.Tensor, seeds: torch.Tensor, padding: int, flip: bool,
                       fill: Fill = 0.0) -> torch.Tensor:
    """`crop_flip` whose window and mirror for each sample come from that sample's own seed (`sample_seeds`)
    instead of a shared generator: the same seed gives the same crop in any batch, order or process, so
    a stored teacher output for (sample, epoch) belongs to exactly the crop the student sees."""
    draws = seed_draws(seeds.to(x.device), 3)
    top, left = (draws[:, :2] % (2 * padding + 1)).T.unsqueeze(2)
    mirrored = (draws[:, 2:] < _MODULUS // 2) if flip else None
    return _crop(x, top, left, mirrored, padding, fill)


def _crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, mirrored: Optional[torch.Tensor], padding: int,
          fill: Fill) -> torch.Tensor:
    """Each sample's window at (`top`, `left`) of `x` padded by `padding`, read backwards where `mirrored`."""
    n, channels, height, width = x.shape
    padded = x.new_empty(n, channels, height + 2 * padding, width + 2 * padding)
    for channel, value in enumerate(_per_channel(fill, channels)):
        padded[:, channel].fill_(value)
    padded[:, :, padding:padding + height, padding:padding + width] = x
    rows = top + torch.arange(height, device=x.device)  # (n, height)
    cols = torch.arange(width, device=x.device)
    if mirrored is not None:
        cols = torch.where(mirrored, cols.flip(0), cols)  # (n, width): read the window backwards
    cols = left + cols
    # One gather over each flattened padded image: 5x faster on CPU than 4-tensor fancy indexing.
    flat_index = (rows.unsqueeze(2) * padded.shape[3] + cols.unsqueeze(1)).view(n, 1, height * width)
    crops = padded.flatten(2).gather(2, flat_index.expand(n, channels, -1)).view(n, channels, height, width)
    return crops.contiguous(memory_format=torch.channels_last) if _is_channels_last(x) else crops


# Per-sample draws from a counter-based hash (no generator state): 31-bit values, so every product fits in int64
# on any device. Multiply-mod-prime (MINSTD) steps interleaved with xor-shifts to break their linearity.
_MODULUS = 2 ** 31 - 1


def sample_seeds(run_seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """The seed of each sample's random transform in `epoch`: a function of (run seed, epoch, sample index)
    alone, so the same crop can be drawn again by anyone (`replayed_crop_flip`, a teacher-output store)."""
    base = (run_seed % _MODULUS * 69621 + epoch * 48271 + 1) % _MODULUS
    return (index.long() % _MODULUS * 16807 + base) % _MODULUS


def seed_draws(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """(n, count) pseudo-random integers in [0, 2^31 - 1), `count` per seed."""
    h, draws = seeds.long() % _MODULUS, []
    for _ in range(count):
        for multiplier in (48271, 16807):
            h = (h * multiplier + 12345) % _MODULUS
            h = h ^ (h >> 13)
            h = (h ^ (h << 7)) & 0x7FFFFFFF
            h = h % _MODULUS
        draws.append(h)
    return torch.stack(draws, 1)


@dataclass(frozen=True)
class CropFlip:
    """The crop(+flip) augmentation with its options bound: called as `TensorData.augment` (a shared generator),
    or replayed per sample from seeds (`replay`). Its repr names the recipe (a teacher-output store's key)."""

    padding: int
    flip: bool
    fill: Fill = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return crop_flip(x, generator, self.padding, self.flip, self.fill)

    def replay(self, x: torch.Tensor, index: torch.Tensor, run_seed: int, epoch: int) -> torch.Tensor:
        """The crops of samples `index` (the rows of `x`) in `epoch` of a run seeded `run_seed`."""
        return replayed_crop_flip(x, sample_seeds(run_seed, epoch, index), self.padding, self.flip, self.fill)


def crop_flip_augment(padding: int, flip: bool, fill: Fill = 0.0) -> CropFlip:
    """`crop_flip` with its options bound, in the `TensorData.augment` signature (and replayable)."""
    return CropFlip(padding, flip, tuple(fill) if not isinstance(fill, (int, float)) else fill)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _per_channel(fill: Fill, channels: int) -> list[float]:
    values = [float(fill)] * channels if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if len(values) != channels:
        raise ValueError(f"fill has {len(values)} values for {channels} channels")
    return values
