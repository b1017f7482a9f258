"""Typed schemas for every command's config, and the checks a type cannot express.

The dataclasses are registered in Hydra's ConfigStore, and each `conf/<command>.yaml`
starts from its schema, so an unknown key or a value of the wrong type fails while the
config is composed. `validate` adds the range checks (T > 0, alpha in [0, 1], ...).
This module imports no torch: the CLI uses it before any job starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from kdrun.core.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
OPTIMIZERS = ("sgd", "adamw")
LOGGERS = ("none", "tensorboard")
SCHEDULES = ("cosine", "multistep", "constant")


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
    label_noise: float = 0.0  # fraction of training labels flipped to another class (test set untouched)
    noise_seed: int = 0
    image_size: Optional[int] = None  # streamed image sets: side of the training crop (their default: 224)
    workers: int = 4  # streamed image sets: DataLoader worker processes per rank (in-memory sets have none)
    # Fraction of the training set held out (seeded by val_seed) to pick the best epoch without the test set.
    val_split: float = 0.0
    val_seed: int = 0
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """A registry name plus the constructor's keyword arguments; `custom` models name an import path
    (`target: my_pkg.nets:build_teacher`, a function returning an nn.Module)."""

    name: str = MISSING
    kwargs: Dict[str, Any] = field(default_factory=dict)
    target: Optional[str] = None


@dataclass
class TeacherTraining:
    """The recipe that produced a teacher; part of its identity in the teacher store."""

    epochs: int = 30
    seed: int = 0
    label_smoothing: float = 0.0  # the teacher's own CE label smoothing (Mueller et al. 2019: smoothed teachers distill worse)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class TeacherConfig(ModelConfig):
    """A teacher: its model, how it was trained, and an optional explicit checkpoint (kdrun's,
    RepDistiller's, mdistiller's or a state_dict) or published weights (`weights`: a torchvision
    weights name such as IMAGENET1K_V2 for tv_ models, `pretrained` for timm_ models)."""

    train: TeacherTraining = field(default_factory=TeacherTraining)
    checkpoint: Optional[str] = None
    weights: Optional[str] = None
    store: str = "outputs/teachers"
    train_if_missing: bool = True


@dataclass
class LatencyConfig:
    """How inference speed is measured (see kdrun/measure/latency.py)."""

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
    # ...but skip a due write while the previous one is younger than this (short epochs); the last epoch always.
    checkpoint_min_seconds: float = 10.0
    # Set by `kdrun <command> resume=RUN_DIR` (see kdrun/run/resume.py); not for typing by hand.
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
    compile: bool = False  # torch.compile the student's training step (worth it on CUDA for long runs)
    student: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class DistillConfig(TrainStudentConfig):
    """`kdrun distill`: the baseline's recipe plus a teacher and the KD loss's T and alpha."""

    command: str = "distill"
    T: float = 4.0
    alpha: float = 0.9
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teacher_epoch: Optional[int] = None  # distill from the teacher's snapshot after this epoch of its recipe
    # The distillation method (conf/loss/<name>.yaml); its options are typed by the method's own
    # schema in kdrun/methods/<name>.py, checked when the run is composed.
    loss: Dict[str, Any] = field(default_factory=lambda: {"name": "kd"})
    probe: bool = True  # per epoch: grad_ratio_corr on a fixed subset of training examples
    probe_examples: int = 512


@dataclass
class InspectTeacherConfig(RunConfig):
    """`kdrun inspect-teacher`: plots and statistics of what a trained teacher knows."""

    command: str = "inspect_teacher"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teacher_epoch: Optional[int] = None
    temperatures: List[float] = field(default_factory=lambda: [1.0, 4.0, 10.0])
    matrix_T: float = 4.0  # temperature of the class-relationship heatmap
    examples: int = 4  # test examples in the dark-knowledge picture


SCHEMAS = {
    "train_teacher_schema": TrainTeacherConfig,
    "train_student_schema": TrainStudentConfig,
    "distill_schema": DistillConfig,
    "inspect_teacher_schema": InspectTeacherConfig,
}


def register_schemas() -> None:
    """Make the schemas available to the `defaults` lists of conf/*.yaml."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)


def method_names() -> list[str]:
    """The distillation methods: one conf/loss/<name>.yaml each (read from disk: no torch import)."""
    return sorted(path.stem for path in (config_dir() / "loss").glob("*.yaml"))


def config_dir() -> Path:
    """The conf/ folder: inside the installed package, or at the repository's top level."""
    package = Path(__file__).resolve().parents[1]  # kdrun/
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parent / "conf"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


MAX_THREADS = 4096  # torch keeps a thread count in 32 bits; no machine has more cores than this
SEED_LIMIT = 2**63  # torch.manual_seed takes [0, 2^63); a seed is recorded as a JSON integer


def _check_numbers(node: Any, prefix: str = "") -> None:
    """Every number finite and within 64 bits: T=1e309 (inf) or a 400-digit value ends here, not inside torch."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            _check_numbers(value, f"{name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number (got {value})")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= SEED_LIMIT:
            raise ConfigError(f"{name} is too large (got {str(value)[:20]}{'...' if len(str(value)) > 20 else ''}, "
                              f"{len(str(abs(value)))} digits); use a value below 2^63")


def _check_seed(value: int, key: str) -> None:
    _check(0 <= value < SEED_LIMIT, f"{key} must be in [0, 2^63) (got {value}); try {key}=0")


def _validate_optim(optim: Any, key: str) -> None:
    _check(optim.name in OPTIMIZERS, f"{key}.name must be one of {', '.join(OPTIMIZERS)} (got '{optim.name}')")
    _check(optim.schedule in SCHEDULES, f"{key}.schedule must be one of {', '.join(SCHEDULES)} (got '{optim.schedule}')")
    _check(optim.lr > 0, f"{key}.lr must be > 0 (got {optim.lr}); try {key}.lr=0.01")
    _check(optim.weight_decay >= 0, f"{key}.weight_decay must be >= 0 (got {optim.weight_decay})")
    _check(optim.batch_size >= 1, f"{key}.batch_size must be >= 1 (got {optim.batch_size})")
    _check(optim.momentum >= 0, f"{key}.momentum must be >= 0 (got {optim.momentum}); try {key}.momentum=0.9")
    _check(not (optim.name == "sgd" and optim.nesterov and optim.momentum == 0),
           f"{key}.nesterov=true needs {key}.momentum > 0 (got 0); set {key}.momentum=0.9 or {key}.nesterov=false")
    _check(optim.gamma > 0, f"{key}.gamma must be > 0 (got {optim.gamma}); the factor at each milestone, try 0.1")


def validate(cfg: Any) -> None:
    """Reject values no run can use; each message names the key and a valid example."""
    _check_numbers(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg)
    _check_seed(cfg.seed, "seed")
    _check_seed(cfg.dataset.noise_seed, "dataset.noise_seed")
    _validate_latency(cfg.latency)
    _check(bool(DEVICE_PATTERN.match(str(cfg.device))),
           f"device must be auto, cpu, cuda, cuda:N or mps (got '{cfg.device}')")
    _check(cfg.epochs >= 1, f"epochs must be >= 1 (got {cfg.epochs}); try epochs=10")
    _check(cfg.logger in LOGGERS, f"logger must be one of {', '.join(LOGGERS)} (got '{cfg.logger}')")
    _check(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, 0 meaning never (got {cfg.checkpoint_every})")
    _check(cfg.checkpoint_min_seconds >= 0, "checkpoint_min_seconds must be >= 0, 0 meaning every due epoch "
           f"(got {cfg.checkpoint_min_seconds})")
    _check(0 <= cfg.threads <= MAX_THREADS, f"threads must be in [0, {MAX_THREADS}], 0 meaning torch's default "
           f"(got {cfg.threads})")
    _validate_dataset(cfg.dataset)
    if "teacher" in cfg:
        _validate_teacher(cfg)
        _validate_model(cfg.teacher, "teacher")
    if "student" in cfg:
        _validate_model(cfg.student, "student")
    if "optim" in cfg:
        _validate_optim(cfg.optim, "optim")
    if "T" in cfg:
        _check(cfg.T > 0, f"T must be > 0 (got {cfg.T}); the temperature divides the logits, try T=4")
        _check(0 <= cfg.alpha <= 1, f"alpha must be in [0, 1] (got {cfg.alpha}); it weights the KD term, try alpha=0.9")
    if "loss" in cfg:
        _validate_loss(cfg.loss)
    if "probe_examples" in cfg:
        _check(cfg.probe_examples >= 2, f"probe_examples must be >= 2 (got {cfg.probe_examples}); try probe_examples=512")
    if "temperatures" in cfg:
        _check(len(cfg.temperatures) > 0 and all(t > 0 for t in cfg.temperatures),
               f"temperatures must be a non-empty list of values > 0 (got {list(cfg.temperatures)}); try temperatures=[1,4,10]")
        _check(cfg.matrix_T > 0, f"matrix_T must be > 0 (got {cfg.matrix_T}); try matrix_T=4")
        _check(cfg.examples >= 1, f"examples must be >= 1 (got {cfg.examples})")


def _validate_latency(latency: Any) -> None:
    _check(latency.batch_size >= 1, f"latency.batch_size must be >= 1 (got {latency.batch_size}); try 256")
    _check(latency.warmup >= 0, f"latency.warmup must be >= 0 (got {latency.warmup})")
    _check(latency.min_reps >= 1, f"latency.min_reps must be >= 1 (got {latency.min_reps}): with none, "
           "nothing is timed; try latency.min_reps=50")
    _check(latency.min_seconds >= 0, f"latency.min_seconds must be >= 0 (got {latency.min_seconds})")


def _validate_dataset(dataset: Any) -> None:
    _check(0 <= dataset.val_split < 1, f"dataset.val_split must be in [0, 1) (got {dataset.val_split}); "
           "it is the fraction of the training set held out for model selection, try dataset.val_split=0.1")
    _check(0 <= dataset.label_noise < 1, f"dataset.label_noise must be in [0, 1) (got {dataset.label_noise}); "
           "it is the fraction of training labels flipped, try dataset.label_noise=0.2")
    _check(dataset.workers >= 0, f"dataset.workers must be >= 0, 0 meaning load in the main process "
           f"(got {dataset.workers})")
    _check(dataset.image_size is None or dataset.image_size >= 8,
           f"dataset.image_size must be >= 8 pixels (got {dataset.image_size}); try dataset.image_size=224")


def _validate_teacher(cfg: Any) -> None:
    train = cfg.teacher.train
    _check_seed(train.seed, "teacher.train.seed")
    _check(train.epochs >= 1, f"teacher.train.epochs must be >= 1 (got {train.epochs})")
    _check(0 <= train.label_smoothing < 1, f"teacher.train.label_smoothing must be in [0, 1) (got {train.label_smoothing})")
    _validate_optim(train.optim, "teacher.train.optim")
    epoch = cfg.get("teacher_epoch")
    if epoch is not None:
        _check(1 <= epoch <= train.epochs, f"teacher_epoch must be in [1, teacher.train.epochs={train.epochs}] "
               f"(got {epoch}); it picks a snapshot of the teacher's own training")
        _check(not cfg.teacher.checkpoint and not cfg.teacher.weights, "teacher_epoch needs the teacher store; it "
               "cannot pick an epoch of an explicit teacher.checkpoint or teacher.weights (drop one of the two)")
    _check(not (cfg.teacher.checkpoint and cfg.teacher.weights), "teacher.checkpoint and teacher.weights both "
           "give the teacher's weights; drop one of the two")
    _check(cfg.command != "train_teacher" or not (cfg.teacher.checkpoint or cfg.teacher.weights),
           "train-teacher trains a teacher from scratch (its run writes a kdrun checkpoint); teacher.checkpoint and "
           "teacher.weights are for distill and inspect-teacher, drop them here")


def _validate_model(model: Any, key: str) -> None:
    if model.name == "custom":
        _check(bool(model.target), f"{key}=custom needs {key}.target=MODULE:FUNCTION (a function returning an "
               f"nn.Module, its module on PYTHONPATH), e.g. {key}.target=my_pkg.nets:build_{key}")
    else:
        _check(not model.target, f"{key}.target is for {key}=custom (got {key}.name={model.name}); "
               f"set {key}=custom or drop {key}.target")


def _validate_loss(loss: Any) -> None:
    """The name here; the method's options by its own schema (kdrun.methods.parse_params, which needs torch)."""
    names = method_names()
    _check(loss.get("name") in names, f"unknown loss '{loss.get('name')}'; choose one of: {', '.join(names)}")
