"""Where and how a run executes: device choice, seeds, and threads that fit the CPUs this process may use."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from kdrun.core.errors import KdrunError
from kdrun.core.jobenv import others_running, usable_cpus


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


def free_cpus(usable: int, others: Optional[float]) -> int:
    """Usable CPUs less the other runnable tasks (rounded), at least one."""
    return max(1, usable - round(others or 0))


@dataclass(frozen=True)
class Threads:
    """The intra-op thread count a run uses and why (recorded in summary.json)."""

    threads: int
    requested: int  # 0: chosen here
    usable_cpus: int
    limited_by: str
    others_running: Optional[float]

    def line(self) -> str:
        busy = "" if self.others_running is None else f", {self.others_running:g} other runnable task(s)"
        how = "chosen" if self.requested == 0 else f"threads={self.requested}"
        return f"{self.threads} threads ({how}; {self.usable_cpus} usable CPU(s): {self.limited_by}{busy})"

    @property
    def fitting(self) -> int:
        """The count `threads=0` chooses: the usable CPUs not taken by other runnable tasks, at least one."""
        return free_cpus(self.usable_cpus, self.others_running)

    def oversubscribed(self) -> bool:
        """More threads than the usable CPUs left free by the other runnable tasks."""
        return self.others_running is not None and self.threads > max(1, self.usable_cpus - self.others_running)


def fit_threads(requested: int, environ: Mapping[str, str] = os.environ) -> Threads:
    """`threads=N` as asked; 0 means the usable CPUs not taken by other runnable tasks (at least one)."""
    cpus, limit = usable_cpus(environ)
    others = others_running()
    return Threads(requested or free_cpus(cpus, others), requested, cpus, limit, others)


def set_threads(requested: int) -> Threads:
    """Set torch's intra-op threads to what fits (see `fit_threads`) and say how many."""
    chosen = fit_threads(requested)
    torch.set_num_threads(chosen.threads)
    return chosen
