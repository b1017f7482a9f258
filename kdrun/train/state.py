"""The resumable state of a training run (`last.pt`): weights, optimiser, schedule, RNGs, history; and when
it is written (`CheckpointSchedule`).

Everything is stored as tensors and plain Python values, so `torch.load(weights_only=True)`
reads it back without running code from the file. The random states are all of them the
run consumes: python, numpy, torch's global generator (dropout), CUDA's, and the engine's
own generators for batch order and augmentation, so a resumed run draws exactly the
numbers the uninterrupted one would have drawn.
"""

from __future__ import annotations

import copy
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from kdrun.core.errors import KdrunError, first_line
from kdrun.core.files import write_atomic, writes
from kdrun.models.checkpoint import load_payload

STATE_FORMAT = "kdrun-train-state"
STATE_VERSION = 1


def capture_rng(order: torch.Generator, augment: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from, as tensors and ints."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "order": order.get_state(),
        "augment": augment.get_state(),
    }


def restore_rng(rng: dict[str, Any], order: torch.Generator, augment: torch.Generator) -> None:
    """The inverse of `capture_rng`."""
    python = rng["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = rng["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    try:
        order.set_state(rng["order"])
        augment.set_state(rng["augment"])
    except RuntimeError as error:  # a CPU generator's state given to a CUDA one, or the reverse
        raise KdrunError(f"last.pt was saved by a run on another kind of device ({first_line(error)}); resume it on "
                         "the device it started on (e.g. hide the GPUs with CUDA_VISIBLE_DEVICES= for a CPU run)") from None


def plain_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """MultiStepLR keeps its milestones in a Counter, which weights_only refuses: store a dict."""
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in state.items()}


def restore_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    if isinstance(getattr(scheduler, "milestones", None), Counter):
        state = {**state, "milestones": Counter(state["milestones"])}
    scheduler.load_state_dict(state)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `last.pt` atomically: a kill during the write leaves the previous one intact (rank 0 writes it)."""
    if not writes():
        return
    write_atomic(path, lambda f: torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, f))


class StateWriter:
    """`save_state` to one path from a worker thread, so an epoch does not wait for the disk's fsync.

    Writes to the path stay in order (each waits for the previous one), the snapshot is copied
    first (its tensors alias the live model and optimiser), and a snapshot taken mid-epoch (an
    interruption: the process is about to exit) is written at once. Python waits for pending
    writes at exit; a kill before one ends leaves the previous last.pt, written atomically.
    """

    _pool: Optional[ThreadPoolExecutor] = None

    def __init__(self, path: Path) -> None:
        self.path, self.pending = path, None

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.flush()
        if snapshot.get("step"):
            save_state(self.path, snapshot)
            return
        if StateWriter._pool is None:
            # Many threads: a stacked group writes one last.pt per job, and fsyncs wait side by side.
            StateWriter._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kdrun-last-pt")
        self.pending = StateWriter._pool.submit(save_state, self.path, copy.deepcopy(snapshot))

    def flush(self) -> None:
        """Wait for the write in flight (and raise its error, if it failed)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()


def load_state(path: Path) -> dict[str, Any]:
    """Read `last.pt` as data only; anything else is a one-line error."""
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise KdrunError(f"{path} is not a kdrun training state (no '{STATE_FORMAT}' header); "
                         "it cannot be resumed, start the run again")
    if payload.get("version") != STATE_VERSION:
        raise KdrunError(f"{path} has training-state version {payload.get('version')}, this kdrun reads "
                         f"{STATE_VERSION}; start the run again")
    return payload


@dataclass
class CheckpointSchedule:
    """When `last.pt` is written: every `every` epochs and after the last (0: only on a signal), but a due
    write is skipped while the previous one is younger than `min_seconds`: epochs of a fraction of a
    second would otherwise spend much of their time pickling and fsyncing it. The last epoch is always written."""

    every: int = 1
    min_seconds: float = 0.0
    written: Optional[float] = None  # time.monotonic() of the previous write

    def due(self, epoch: int, epochs: int) -> bool:
        if self.every <= 0 or (epoch % self.every and epoch != epochs):
            return False
        now = time.monotonic()
        if epoch != epochs and self.written is not None and now - self.written < self.min_seconds:
            return False
        self.written = now
        return True
