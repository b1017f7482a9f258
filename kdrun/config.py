"""Typed schemas for every command's config, and the checks a type cannot express.

The dataclasses are registered in Hydra's ConfigStore, and each `conf/<command>.yaml`
starts from its schema, so an unknown key or a value of the wrong type fails while the
config is composed. `validate` adds the range checks (T > 0, alpha in [0, 1], ...).
This module imports no torch: the CLI uses it before any job starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from kdrun.errors import KdrunError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
OPTIMIZERS = ("sgd", "adamw")
LOGGERS = ("none", "tensorboard")
SCHEDULES = ("cosine", "multistep", "constant")


class ConfigError(KdrunError):
    """A config value that composes but makes no sense (T <= 0, alpha > 1, ...)."""


@dataclass
class OptimConfig:
    """How a model is trained: optimiser, learning-rate schedule and batch size."""

    name: str = "adamw"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1
    batch_size: int = 128


@dataclass
class DatasetConfig:
    """Which dataset, where it lives, and the builder's own options (`kwargs`)."""

    name: str = MISSING
    data_dir: str = "~/.cache/kdrun/data"
    download: bool = False
    augment: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """A registry name plus the constructor's keyword arguments."""

    name: str = MISSING
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherTraining:
    """The recipe that produced a teacher; part of its identity in the teacher store."""

    epochs: int = 30
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class TeacherConfig(ModelConfig):
    """A teacher: its model, how it was trained, and an optional explicit checkpoint."""

    train: TeacherTraining = field(default_factory=TeacherTraining)
    checkpoint: Optional[str] = None
    store: str = "outputs/teachers"
    train_if_missing: bool = True


@dataclass
class LatencyConfig:
    """How inference speed is measured (see kdrun/latency.py)."""

    batch_size: int = 256
    warmup: int = 10
    min_reps: int = 50
    min_seconds: float = 0.5


@dataclass
class RunConfig:
    """Keys every command shares."""

    command: str = MISSING
    seed: int = 0
    epochs: int = 20
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    logger: str = "none"
    # Write last.pt (everything needed to continue) every N epochs and at the last; 0: never.
    checkpoint_every: int = 1
    # Set by `kdrun <command> resume=RUN_DIR` (see kdrun/resume.py); not for typing by hand.
    resume: Optional[str] = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)


@dataclass
class TrainTeacherConfig(RunConfig):
    """`kdrun train-teacher`: top-level `epochs`/`seed` set `teacher.train.*`."""

    command: str = "train_teacher"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


@dataclass
class TrainStudentConfig(RunConfig):
    """`kdrun train-student`: the student on hard labels alone, the baseline for distill."""

    command: str = "train_student"
    student: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class DistillConfig(TrainStudentConfig):
    """`kdrun distill`: the baseline's recipe plus a teacher and the KD loss's T and alpha."""

    command: str = "distill"
    T: float = 4.0
    alpha: float = 0.9
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


SCHEMAS = {
    "train_teacher_schema": TrainTeacherConfig,
    "train_student_schema": TrainStudentConfig,
    "distill_schema": DistillConfig,
}


def register_schemas() -> None:
    """Make the schemas available to the `defaults` lists of conf/*.yaml."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)


def config_dir() -> Path:
    """The conf/ folder: inside the installed package, or at the repository's top level."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_optim(optim: Any, key: str) -> None:
    _check(optim.name in OPTIMIZERS, f"{key}.name must be one of {', '.join(OPTIMIZERS)} (got '{optim.name}')")
    _check(optim.schedule in SCHEDULES, f"{key}.schedule must be one of {', '.join(SCHEDULES)} (got '{optim.schedule}')")
    _check(optim.lr > 0, f"{key}.lr must be > 0 (got {optim.lr}); try {key}.lr=0.01")
    _check(optim.weight_decay >= 0, f"{key}.weight_decay must be >= 0 (got {optim.weight_decay})")
    _check(optim.batch_size >= 1, f"{key}.batch_size must be >= 1 (got {optim.batch_size})")


def validate(cfg: Any) -> None:
    """Reject values no run can use; each message names the key and a valid example."""
    _check(bool(DEVICE_PATTERN.match(str(cfg.device))),
           f"device must be auto, cpu, cuda, cuda:N or mps (got '{cfg.device}')")
    _check(cfg.epochs >= 1, f"epochs must be >= 1 (got {cfg.epochs}); try epochs=10")
    _check(cfg.logger in LOGGERS, f"logger must be one of {', '.join(LOGGERS)} (got '{cfg.logger}')")
    _check(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, 0 meaning never (got {cfg.checkpoint_every})")
    _check(cfg.threads >= 0, f"threads must be >= 0, 0 meaning torch's default (got {cfg.threads})")
    if "teacher" in cfg:
        _check(cfg.teacher.train.epochs >= 1, f"teacher.train.epochs must be >= 1 (got {cfg.teacher.train.epochs})")
        _validate_optim(cfg.teacher.train.optim, "teacher.train.optim")
    if "optim" in cfg:
        _validate_optim(cfg.optim, "optim")
    if "T" in cfg:
        _check(cfg.T > 0, f"T must be > 0 (got {cfg.T}); the temperature divides the logits, try T=4")
        _check(0 <= cfg.alpha <= 1, f"alpha must be in [0, 1] (got {cfg.alpha}); it weights the KD term, try alpha=0.9")
