"""Which jobs of a sweep can be trained together as one stacked model (`hydra/launcher=stacked`).

Jobs group when they share everything one training loop needs: the command, dataset,
student architecture and kwargs, teacher, epochs, batch size, optimiser type (and SGD's
momentum), loss kind, device and threads. Per job they may differ in T, alpha, seed, learning
rate, weight decay and schedule. A job that cannot be stacked says why and runs alone.
No torch here: it only reads configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from kdrun.trackers import tracker_names

STACKABLE_COMMANDS = ("distill", "train_student")
STACKABLE_LOSSES = ("kd", "ce")
# Students from torchvision, timm or your own code may hold random layers (dropout, stochastic depth),
# which vmap refuses to run ("random operation"), or code it cannot batch; these torchvision families
# hold none and were trained stacked (kdrun's own models all stack: the MLP, cnn1d, the CIFAR zoo).
FOREIGN_STUDENTS = ("tv_", "timm_", "custom")
STACKABLE_FOREIGN = ("tv_resnet", "tv_resnext", "tv_wide_resnet", "tv_regnet", "tv_shufflenet_v2", "tv_densenet")


@dataclass
class Group:
    """Jobs (indices into the sweep's job list) that train as one stacked model; one job if alone."""

    jobs: list[int] = field(default_factory=list)
    alone_because: Optional[str] = None


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def refusal(cfg: DictConfig) -> Optional[str]:
    """Why this job cannot be stacked, or None."""
    if cfg.command not in STACKABLE_COMMANDS:
        return f"command {cfg.command} is not stacked (only {', '.join(STACKABLE_COMMANDS)})"
    if cfg.get("compile"):
        return "compile=true"
    if tracker_names(cfg.logger):
        return f"logger={','.join(tracker_names(cfg.logger))}: a tracker logs one training loop per run"
    if cfg.dataset.augment:
        return "random augmentation: the teacher must see each job's own augmented batch"
    if "teacher" in cfg and cfg.teacher.get("outputs") == "store":
        return "teacher.outputs=store: each job reads the stored teacher outputs in its own loop"
    if "loss" in cfg and cfg.loss.name not in STACKABLE_LOSSES:
        return f"loss={cfg.loss.name}: stacked training supports loss={' and loss='.join(STACKABLE_LOSSES)}"
    if "loss" in cfg and cfg.loss.get("logit_std"):
        return "loss.logit_std=true: the stacked KD loss has no logit standardization"
    if cfg.dataset.get("val_split"):
        return "dataset.val_split: the stacked loop does not evaluate a validation split"
    if cfg.student.get("quant", "none") != "none":
        return f"student.quant={cfg.student.quant}: the stacked model has no fake-quantized layers"
    if cfg.student.kwargs.get("dropout"):
        return "dropout: each job would need its own random masks"
    if any(value is not None for value in (cfg.student.get("view") or {}).values()):
        return "student.view: the stacked model reads the stream as it is, without the student's own view"
    name = cfg.student.name
    if name.startswith(FOREIGN_STUDENTS) and not name.startswith(STACKABLE_FOREIGN):
        return (f"student {name} may hold random layers (dropout, stochastic depth), which a stacked model cannot "
                f"draw per job; of torchvision's models these stack: {', '.join(STACKABLE_FOREIGN)}")
    return None


def group_key(cfg: DictConfig) -> str:
    """Equal for jobs that can share one stacked training loop."""
    optim = cfg.optim
    shared = {
        "command": cfg.command, "dataset": _plain(cfg.dataset), "student": _plain(cfg.student),
        "epochs": cfg.epochs, "optimizer": optim.name, "batch_size": optim.batch_size,
        "momentum": optim.momentum if optim.name == "sgd" else None,
        "nesterov": optim.nesterov if optim.name == "sgd" else None,
        "device": cfg.device, "threads": cfg.threads, "latency": _plain(cfg.latency), "progress": cfg.progress,
        "checkpoint_every": cfg.checkpoint_every, "checkpoint_min_seconds": cfg.checkpoint_min_seconds,
        "resumed": cfg.resume is not None,
    }
    if cfg.command == "distill":
        shared.update(teacher=_plain(cfg.teacher), teacher_epoch=cfg.teacher_epoch, loss=cfg.loss.name,
                      probe=cfg.probe, probe_examples=cfg.probe_examples)
    return json.dumps(shared, sort_keys=True, default=str)


def plan(configs: list[DictConfig], max_group_size: int, starts: Optional[list[Any]] = None) -> list[Group]:
    """The sweep's jobs as groups, in the order of their first job; incompatible jobs alone with a reason.

    `starts` (a resumed sweep) says where each job's training continues (epoch and step of its
    last.pt, None for a fresh start): a stacked loop runs its jobs in step, so only jobs at the
    same point group; a job stopped elsewhere (a failed job, a kill between two jobs' epoch-end
    checkpoints) continues in a group of its own point, or alone.
    """
    groups: list[Group] = []
    open_groups: dict[str, Group] = {}
    for index, cfg in enumerate(configs):
        reason = refusal(cfg)
        if reason is not None:
            groups.append(Group([index], reason))
            continue
        key = group_key(cfg) + json.dumps(starts[index] if starts else None)
        group = open_groups.get(key)
        if group is None or len(group.jobs) >= max_group_size:
            group = open_groups[key] = Group()
            groups.append(group)
        group.jobs.append(index)
    for group in groups:
        if len(group.jobs) == 1 and group.alone_because is None:
            group.alone_because = "no other job of the sweep shares its training loop"
    return groups
