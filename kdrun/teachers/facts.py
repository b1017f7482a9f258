"""What every job of a sweep would otherwise recompute about its teacher: its training-set logits (one
inference pass) and its size (params, FLOPs). Computed once, then shared. Never its latency: times are
measured by each run, beside the student's (kdrun.measure.latency).

The teacher's facts are a property of its checkpoint, the training inputs and the device,
so they live in kdrun's teacher store (`<store>/.facts/<name>-<path digest>.facts`, never beside
a checkpoint of the user's own, in a directory that is theirs), one entry per such key, read and
written under a file lock (parallel jobs compute them once) and replaced atomically. A store that
cannot be written only costs the recomputation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.core.files import write_atomic
from kdrun.measure.latency import size
from kdrun.models.checkpoint import load_payload
from kdrun.models.views import view_of
from kdrun.train.evaluate import predict

log = logging.getLogger("kdrun")
FACTS_VERSION = 2  # 1 also held a latency measured once and kept: never reused now


@dataclass(frozen=True)
class TeacherFacts:
    """The frozen teacher on this sweep's training set and machine."""

    train_logits: torch.Tensor  # on the data's device, for its un-augmented `teacher_reference` inputs
    size: dict[str, int]  # params, flops


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (others by their str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inputs_fingerprint(x: torch.Tensor) -> str:
    """A cheap identity for a training set: its shape and up to 65k evenly spaced values."""
    flat = x.detach().flatten()
    sample = flat[:: max(1, flat.numel() // 65536)].float().cpu().contiguous()
    return hashlib.sha256(str(tuple(x.shape)).encode() + sample.numpy().tobytes()).hexdigest()[:16]


def _facts_file(store: Path, checkpoint: Path) -> Path:
    """The cache of `checkpoint`'s facts, in kdrun's store (a hidden dir: store listings see teachers only)."""
    digest = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:12]
    return store / ".facts" / f"{checkpoint.stem}-{digest}.facts"


def _read_entries(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        entries = load_payload(path)
    except KdrunError as error:  # damaged: recompute rather than fail the run
        log.info("Ignoring the unreadable teacher cache %s (%s)", path, error)
        return {}
    return entries if isinstance(entries, dict) else {}


def _cached(path: Path, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The entry `key` of the cache file `path`, computed and stored by the first job that needs it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path.with_name(f"{path.name}.lock"))):
            entries = _read_entries(path)
            if key not in entries:
                entries[key] = compute()
                write_atomic(path, lambda f: torch.save(entries, f))
            return entries[key]
    except OSError as error:  # a read-only store: compute, keep nothing
        log.info("Teacher cache not writable (%s): computing the teacher's logits and cost for this job only",
                 error.strerror or error)
        return compute()


def teacher_facts(model: nn.Module, checkpoint: Path, store: Path, data: Any, device: torch.device) -> TeacherFacts:
    """The teacher's logits for the training inputs it is judged on (`data.teacher_reference`: all of an
    in-memory set, a fixed sample of a streamed one) and its size, from the store's cache or computed now:
    one inference pass over those inputs, and one forward for the FLOPs."""
    inputs = data.teacher_reference(device)[0]
    stat = checkpoint.stat()
    view = view_of(model)  # one checkpoint seen through another view gives other logits
    key = cache_key(FACTS_VERSION, checkpoint.name, stat.st_size, stat.st_mtime_ns, inputs_fingerprint(inputs),
                    str(device), *([] if view.identity else [repr(view)]))

    def compute() -> dict[str, Any]:
        return {"train_logits": predict(model, inputs).cpu(), "size": size(model, data.input_shape, device)}

    entry = _cached(_facts_file(store, checkpoint), key, compute)
    return TeacherFacts(entry["train_logits"].to(device), entry["size"])
