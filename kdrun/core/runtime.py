"""Where and how a run executes: device choice, seeds, thread count."""

from __future__ import annotations

import random

import numpy as np
import torch

from kdrun.core.errors import KdrunError


def resolve_device(name: str) -> torch.device:
    """`auto` means CUDA, else MPS, else CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdrunError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise KdrunError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist; use device=cuda:0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise KdrunError(f"device={name} but MPS is not available here; use device=auto or device=cpu")
    return device


def memory_format(device: torch.device, ndim: int) -> torch.memory_format:
    """channels_last for image batches on CUDA, where cuDNN's NHWC kernels (and bf16 tensor cores) are
    fastest; elsewhere keep the layout as it is."""
    return torch.channels_last if device.type == "cuda" and ndim == 4 else torch.preserve_format


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a run is repeatable from its seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> int:
    """Cap intra-op threads (0 keeps torch's default) and return the number in use."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
