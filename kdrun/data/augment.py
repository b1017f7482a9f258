"""Batched, seeded random augmentation that runs where the batch already is (CPU or GPU).

One gather per batch replaces a per-sample PIL pipeline: pad once, then read each
sample's crop window (and, for a flip, its columns backwards). All randomness comes
from the caller's generator, which lives on the batch's device, so a seed reproduces the
exact sequence of augmented batches.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from kdrun.data.base import Augment

Fill = Union[float, Sequence[float]]


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int, flip: bool, fill: Fill = 0.0) -> torch.Tensor:
    """Random crop of the input size from `x` padded by `padding` on each side, then a coin-flip
    horizontal mirror per sample (when `flip`). `fill` is the padding value, one per channel or one
    for all; it equals torchvision's `RandomCrop(size, padding)` when it is the normalised black."""
    n, channels, height, width = x.shape
    padded = x.new_empty(n, channels, height + 2 * padding, width + 2 * padding)
    for channel, value in enumerate(_per_channel(fill, channels)):
        padded[:, channel].fill_(value)
    padded[:, :, padding:padding + height, padding:padding + width] = x

    top, left = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator, device=x.device)
    rows = top + torch.arange(height, device=x.device)  # (n, height)
    cols = torch.arange(width, device=x.device)
    if flip:
        mirrored = torch.rand(n, 1, generator=generator, device=x.device) < 0.5
        cols = torch.where(mirrored, cols.flip(0), cols)  # (n, width): read the window backwards
    cols = left + cols
    # One gather over each flattened padded image: 5x faster on CPU than 4-tensor fancy indexing.
    flat_index = (rows.unsqueeze(2) * padded.shape[3] + cols.unsqueeze(1)).view(n, 1, height * width)
    crops = padded.flatten(2).gather(2, flat_index.expand(n, channels, -1)).view(n, channels, height, width)
    return crops.contiguous(memory_format=torch.channels_last) if _is_channels_last(x) else crops


def crop_flip_augment(padding: int, flip: bool, fill: Fill = 0.0) -> Augment:
    """`crop_flip` with its options bound, in the `TensorData.augment` signature."""

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return crop_flip(x, generator, padding, flip, fill)

    return augment


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _per_channel(fill: Fill, channels: int) -> list[float]:
    values = [float(fill)] * channels if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if len(values) != channels:
        raise ValueError(f"fill has {len(values)} values for {channels} channels")
    return values
