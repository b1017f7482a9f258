"""Where a command starts: threads, device and data; the student's initial weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.core.distributed import context, device_for
from kdrun.core.errors import KdrunError
from kdrun.core.runtime import Threads, resolve_device, seed_everything, set_threads
from kdrun.data import TensorData, holdout, load_dataset
from kdrun.data.noise import with_label_noise
from kdrun.models import build_viewed, model_kwargs
from kdrun.models.checkpoint import load_weights, read_weights
from kdrun.models.views import stream_normalisation

log = logging.getLogger("kdrun")


@dataclass
class Setup:
    device: torch.device
    data: Any  # TensorData (in memory) or StreamingData (read by DataLoader workers)
    threads: Threads


def setup(cfg: DictConfig) -> Setup:
    """Threads, device (one GPU per rank under torchrun) and the dataset (in memory: moved to the device once)."""
    threads = set_threads(cfg.threads)
    log.info("threads: %s", threads.line())
    if threads.oversubscribed():
        log.warning("the machine is busy: %g other runnable task(s) on %d usable CPU(s), and this run takes %d "
                    "threads; training may be many times slower: try threads=%d", threads.others_running,
                    threads.usable_cpus, threads.threads, threads.fitting)
    device = device_for(resolve_device(cfg.device))
    d = cfg.dataset
    data = load_dataset(d.name, d.data_dir, d.download, d.augment, OmegaConf.to_container(d.kwargs, resolve=True),
                        image_size=d.image_size, workers=d.workers)
    if d.label_noise > 0:
        if not isinstance(data, TensorData):
            raise KdrunError(f"dataset.label_noise needs an in-memory dataset; '{data.name}' is streamed from disk")
        data = with_label_noise(data, d.label_noise, d.noise_seed)
        log.info("label noise: %d of %d training labels flipped (noise_seed %d); test labels clean",
                 round(d.label_noise * len(data.y_train)), len(data.y_train), d.noise_seed)
    if d.val_split > 0:
        if not isinstance(data, TensorData):
            raise KdrunError(f"dataset.val_split needs an in-memory dataset; '{data.name}' is streamed: "
                             "hold out a folder as its validation set instead")
        data = holdout(data, d.val_split, d.val_seed)
        log.info("validation: %d training examples held out (dataset.val_split=%g, val_seed %d) to pick the "
                 "best epoch", len(data.x_val), d.val_split, d.val_seed)
    feed = "in memory" if isinstance(data, TensorData) else f"streamed by {data.workers} DataLoader workers"
    log.info("%s: %d train / %d test, input %s, %d classes, %s; device %s, %d threads", data.name,
             data.train_size, data.test_size, data.input_shape, data.num_classes, feed, device, threads.threads)
    ctx = context()
    if ctx.distributed:
        batch = cfg.optim.batch_size if "optim" in cfg else cfg.teacher.train.optim.batch_size
        log.info("distributed: rank %d of %d (world size %d); global batch %d = about %d per rank", ctx.rank,
                 ctx.world_size, ctx.world_size, batch, -(-batch // ctx.world_size))
    return Setup(device, data.to(device), threads)


def build_student(cfg: DictConfig, env: Setup) -> torch.nn.Module:
    """The student's initial weights: a function of `seed` alone, or the checkpoint `student.init` names."""
    seed_everything(cfg.seed)
    student = build_viewed(cfg.student.name, env.data.num_classes, env.data.input_shape,
                           stream_normalisation(env.data), model_kwargs(cfg.student), cfg.student.get("view"))
    if cfg.student.get("init"):
        init_student(student, Path(cfg.student.init).expanduser().resolve(), cfg.student.name, env.data)
    return student.to(env.device)


def init_student(student: torch.nn.Module, path: Path, name: str, data: Any) -> None:
    """Load `path` into the freshly built student, after checking that what the file records fits (model,
    classes, input shape); a mismatch is one line naming it."""
    weights = read_weights(path)
    fix = f"pass a checkpoint of a {name} for dataset '{data.name}', or set student= to the file's model"
    recorded = {"model": (weights.arch, name), "classes": (weights.num_classes, data.num_classes),
                "input shape": (weights.input_shape and tuple(weights.input_shape), data.input_shape)}
    for what, (in_file, here) in recorded.items():
        if in_file is not None and in_file != here:
            raise KdrunError(f"student.init={path} holds {what} {in_file} but this run has {here}; {fix}")
    load_weights(student, weights.state_dict, f"student.init={path} ({weights.format} format)", fix)
    log.info("student starts from %s (%s format, sha256 %s)", path, weights.format, weights.sha256[:12])


