"""Stored teacher outputs (`teacher.outputs=store`): the teacher runs once per (sample, epoch) for every student.

With random augmentation the teacher's logits change every epoch, so kdrun runs it live on each
batch, again for every student of a sweep. FKD (Shen & Xing, ECCV 2022) instead stores the
teacher's soft labels per augmented crop once and replays the same crops. Here each sample's
crop is drawn from a seed derived from (run seed, epoch, index) (`data.with_replay()`), so the
store can draw it again: before each epoch the store gives that epoch's outputs, built by the
first job that needs them and read by every later epoch, run and student.

What is kept per sample and epoch is the teacher's top-k logits (values, descending, and class
indices) and the remaining mass, as `tail`: the logit each of the other C - k classes gets so
that together they hold exactly the teacher's probability mass outside the top k at T = 1
(tail = logsumexp(other logits) - log(C - k)). `TopK.logits` rebuilds a full logit vector from
these (top-k logits, the tail elsewhere), so every logit method reads it unchanged: at T = 1 it
has the teacher's top-k probabilities and remaining mass exactly, the rest spread evenly; at
other T the tail is an approximation (docs/stored-teacher-outputs.md measures what it costs).

On disk: `<teacher store>/.outputs/<teacher>-<key>/epoch-NNNN.npy`, one numpy structured array
per epoch (memory-mapped while written; `epoch-0000.npy` alone when every epoch sees the same
inputs), the key a hash of the teacher's weights, the training set's fingerprint, the
augmentation recipe, the run seed and k. Like the teacher store, an epoch is built under a file
lock (parallel jobs build it once) and appears only by rename. Rows are written in index order,
a chunk at a time, into `.epoch-NNNN.npy.partial` with the count of finished rows beside it
(written after the rows are flushed), so a build that was killed resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.core.files import write_atomic
from kdrun.teachers.facts import cache_key, inputs_fingerprint
from kdrun.train.evaluate import predict

log = logging.getLogger("kdrun")
OUTPUTS_VERSION = 1
CHUNK = 256  # samples per teacher forward while building, and per resumable step


@dataclass(frozen=True)
class TopK:
    """One epoch's stored teacher outputs for the whole training set, on the training device."""

    values: torch.Tensor  # (N, k) float32: the k largest logits, descending
    indices: torch.Tensor  # (N, k) long: their classes
    tail: torch.Tensor  # (N,) float32: the logit of every other class (see the module docstring)
    num_classes: int

    def logits(self, index: torch.Tensor) -> torch.Tensor:
        """Full teacher logits for the samples `index`, rebuilt from their top k and tail."""
        rows = self.tail[index].unsqueeze(1).expand(len(index), self.num_classes)
        return rows.scatter(1, self.indices[index], self.values[index])


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, indices, tail) of each row: what the store keeps of it. With k = C the tail is -inf (unused)."""
    values, indices = logits.float().topk(k, dim=1)
    rest = logits.float().scatter(1, indices, float("-inf"))
    others = logits.shape[1] - k
    tail = rest.logsumexp(1) - (np.log(others) if others else 0.0)
    return values, indices, tail


def record_dtype(k: int) -> np.dtype:
    return np.dtype([("values", "<f4", (k,)), ("indices", "<i4", (k,)), ("tail", "<f4")])


def dataset_fingerprint(data: Any) -> str:
    """What the training set is: its files (streamed) or its values and labels (in memory)."""
    if hasattr(data, "x_train"):
        return cache_key(inputs_fingerprint(data.x_train), inputs_fingerprint(data.y_train))
    return data.train_fingerprint()


class OutputStore:
    """One teacher's top-k outputs on one replayable training set: `epoch(n)` reads them, building them first
    if no job has. `forwarded` counts the samples this process ran the teacher on."""

    def __init__(self, directory: Path, teacher: nn.Module, data: Any, run_seed: int, k: int,
                 device: torch.device, chunk: int = CHUNK) -> None:
        self.directory, self.teacher, self.data = directory, teacher.eval().requires_grad_(False), data
        self.run_seed, self.k, self.device, self.chunk = run_seed, k, device, chunk
        self.per_epoch = bool(data.augment)  # without augmentation every epoch shows the same inputs
        self.forwarded = 0

    def path(self, epoch: int) -> Path:
        """The epoch's file: one per epoch with augmentation, one for all without."""
        return self.directory / f"epoch-{epoch if self.per_epoch else 0:04d}.npy"

    def epoch(self, epoch: int) -> TopK:
        """The outputs for `epoch` on the training device: read, or built first (by this job, or by another
        job while this one waited for the lock)."""
        path = self.path(epoch)
        if not path.exists():
            self._build_once(path, epoch)
        return self._read(path)

    def _build_once(self, path: Path, epoch: int) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path.with_name(f".{path.name}.lock"))):
                if not path.exists():  # else another job built it while we waited
                    self._build(path, epoch)
        except OSError as error:
            raise KdrunError(f"cannot write the teacher-output store {self.directory} ({error.strerror or error}); "
                             "make it writable, point teacher.store elsewhere, or use teacher.outputs=live") from None

    def _build(self, path: Path, epoch: int) -> None:
        partial, rows_file = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.rows")
        n, dtype = self.data.train_size, record_dtype(self.k)
        for stale in self.directory.glob(f".{rows_file.name}.*.tmp"):  # a count being written when a job was killed
            stale.unlink(missing_ok=True)
        done = _rows_done(partial, rows_file, dtype, n)
        log.info("Teacher outputs for epoch %d: running the teacher on %d of %d samples (%s)", epoch, n - done, n,
                 f"resuming an interrupted build at sample {done}" if done else "a new build")
        records = np.lib.format.open_memmap(partial, mode="r+" if done else "w+", dtype=dtype, shape=(n,))
        chunks = [list(range(start, min(start + self.chunk, n))) for start in range(done, n, self.chunk)]
        for chunk, inputs in zip(chunks, self.data.replayed_batches(self.run_seed, epoch, chunks, self.device)):
            logits = predict(self.teacher, inputs, len(inputs))
            self.forwarded += len(chunk)
            if not torch.isfinite(logits).all():
                raise KdrunError("the teacher outputs NaN or inf on augmented training inputs; its weights are "
                                 "damaged or diverged: check teacher.checkpoint")
            values, indices, tail = (t.cpu().numpy() for t in top_k(logits, self.k))
            rows = slice(chunk[0], chunk[-1] + 1)
            records["values"][rows], records["indices"][rows], records["tail"][rows] = values, indices, tail
            records.flush()  # the rows are on disk before the count that says so
            write_atomic(rows_file, lambda f, end=rows.stop: f.write(str(end).encode()))
        del records
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
        rows_file.unlink(missing_ok=True)

    def _read(self, path: Path) -> TopK:
        records = np.load(path, mmap_mode="r")

        def field(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(records[name])).to(self.device, dtype)

        return TopK(field("values", torch.float32), field("indices", torch.long), field("tail", torch.float32),
                    self.data.num_classes)


def _rows_done(partial: Path, rows_file: Path, dtype: np.dtype, n: int) -> int:
    """How many rows an interrupted build finished (0: none, or a partial file this build cannot continue)."""
    try:
        done = int(rows_file.read_text())
        header = np.load(partial, mmap_mode="r")
        return done if header.dtype == dtype and header.shape == (n,) and 0 <= done <= n else 0
    except (OSError, ValueError):
        return 0


def open_store(store: Path, teacher_name: str, teacher_source: dict[str, Any], teacher: nn.Module, data: Any,
               run_seed: int, k: int, device: torch.device) -> OutputStore:
    """The output store of this teacher (by its weights: `teacher_source`'s sha256 or published weights name),
    training set, augmentation and seed (with augmentation), under `<store>/.outputs/`."""
    if k > data.num_classes:
        raise KdrunError(f"teacher.top_k={k} but dataset '{data.name}' has {data.num_classes} classes; "
                         f"use teacher.top_k={data.num_classes} or fewer")
    seed = run_seed if data.augment else None  # without augmentation the inputs do not depend on it
    key = cache_key(OUTPUTS_VERSION, teacher_name, teacher_source, dataset_fingerprint(data),
                    data.augmentation_recipe(), seed, k, data.num_classes)
    return OutputStore(store.expanduser().resolve() / ".outputs" / f"{teacher_name}-{key}", teacher, data,
                       run_seed, k, device)
