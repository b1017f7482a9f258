"""Typed schemas for every command's config, and where the config files are.

The dataclasses are registered in Hydra's ConfigStore, and each `conf/<command>.yaml`
starts from its schema, so an unknown key or a value of the wrong type fails while the
config is composed. kdrun.run.validate adds the range checks (T > 0, alpha in [0, 1], ...).
This module imports no torch: the CLI uses it before any job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
class ViewConfig:
    """What this model sees of the sample stream (kdrun/models/views.py): its input side and normalisation.
    null: from published weights' pretrained config (teacher.weights), else the dataset's own."""

    size: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None


@dataclass
class ModelConfig:
    """A registry name plus the constructor's keyword arguments; `custom` models name an import path
    (`target: my_pkg.nets:build_teacher`, a function returning an nn.Module)."""

    name: str = MISSING
    kwargs: Dict[str, Any] = field(default_factory=dict)
    target: Optional[str] = None
    view: ViewConfig = field(default_factory=ViewConfig)


@dataclass
class StudentConfig(ModelConfig):
    """A student: its model; optionally the weights it starts from (`init`: a checkpoint file in a format kdrun
    loads for teachers: kdrun's own, RepDistiller's, mdistiller's or a state_dict) instead of `seed`'s; and whether
    it trains as the INT8 model it will be deployed as (`quant: qat`, fake-quantized for its last `qat_epochs`
    epochs, 0 meaning all; kdrun/deploy/fake_quant.py)."""

    init: Optional[str] = None
    quant: str = "none"
    qat_epochs: int = 0


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
    # distill: `live` runs the teacher on every batch (or caches its logits when inputs never change); `store`
    # keeps its top-k logits per (sample, epoch) beside the store, replaying each crop (kdrun/teachers/outputs.py).
    outputs: str = "live"
    top_k: int = 10  # teacher.outputs=store: logits kept per sample (the rest as one remaining mass)


@dataclass
class LatencyConfig:
    """How inference speed is measured (the protocol: kdrun/measure/latency.py and the docs).

    Per batch size, every model the same number of rounds: at least `min_reps`, until the slowest model has
    been timed `min_seconds`, never beyond `max_seconds` of it; `batch_size` 0 means the training batch size;
    IQR / median above `max_spread` marks it contended."""

    batch_size: int = 0
    warmup: int = 5
    min_reps: int = 20
    min_seconds: float = 0.1
    max_seconds: float = 3.0
    max_spread: float = 0.5


@dataclass
class DeployConfig:
    """What `export=true` (or `kdrun export RUN_DIR`) writes into the run's export/ folder (kdrun/deploy/):
    the student as ONNX, checked against PyTorch to `tolerance`, its INT8 twin calibrated on
    `calibration_batches` training batches of the latency batch size, and the teacher's ONNX for timing."""

    int8: bool = True
    calibration_batches: int = 8
    tolerance: float = 1e-4
    teacher: bool = True


@dataclass
class TrackerConfig:
    """Where `logger=mlflow` / `logger=wandb` log (kdrun.trackers). A run alone logs to `project` (the MLflow
    experiment, the W&B project); a sweep's jobs share one group, named after the sweep unless `group` is set."""

    project: str = "kdrun"
    group: Optional[str] = None
    dir: str = "outputs"  # local stores: <dir>/mlflow.db and <dir>/mlartifacts/ (MLflow), <dir>/wandb/ (W&B)
    mlflow_uri: Optional[str] = None  # any MLflow tracking URI (http://host:5000, sqlite:///x.db); None: the local store
    wandb_mode: str = "offline"  # offline (no network; `wandb sync` later), online, or disabled


@dataclass
class RunConfig:
    """Keys every command shares."""

    command: str = MISSING
    seed: int = 0
    epochs: int = 20
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    # Where epochs and results go besides the run dir: none, tensorboard, mlflow, wandb, or several: [tensorboard,mlflow]
    logger: Any = "none"
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    # Write last.pt (everything needed to continue) every N epochs and at the last; 0: never.
    checkpoint_every: int = 1
    # ...but skip a due write while the previous one is younger than this (short epochs); the last epoch always.
    checkpoint_min_seconds: float = 10.0
    # Keep last.pt once the run has finished (needed to extend it later: resume=RUN_DIR epochs=N); false: removed,
    # checkpoint.pt (the trained model) stays.
    keep_last: bool = False
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
    student: StudentConfig = field(default_factory=StudentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    export: bool = False  # at the end: ONNX + INT8 + ONNX Runtime accuracy and latency (needs kdrun[deploy])
    deploy: DeployConfig = field(default_factory=DeployConfig)


@dataclass
class DistillConfig(TrainStudentConfig):
    """`kdrun distill`: the baseline's recipe plus a teacher and the KD loss's T and alpha."""

    command: str = "distill"
    T: float = 4.0
    alpha: Optional[float] = None  # KD weight of the classic form; None: 0.9, or loss.ce_weight + loss.kd_weight
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


