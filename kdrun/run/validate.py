"""The checks a type cannot express: T > 0, alpha in [0, 1], a known device, finite numbers, 64-bit seeds, ...

Run on every composed config: by the CLI before a run dir exists (kdrun.run.preflight), and by
each job (kdrun.run.task). No torch here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kdrun.core.errors import ConfigError
from kdrun.run.config import method_names
from kdrun.trackers import NAMES as TRACKERS
from kdrun.trackers import tracker_names

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


OPTIMIZERS = ("sgd", "adamw")


WANDB_MODES = ("offline", "online", "disabled")


SCHEDULES = ("cosine", "multistep", "constant")


TEACHER_OUTPUTS = ("live", "store")


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


def _validate_logger(cfg: Any) -> None:
    logger = OmegaConf.to_container(cfg.logger) if OmegaConf.is_config(cfg.logger) else cfg.logger
    known = ", ".join(["none", *TRACKERS])
    _check(isinstance(logger, str) or (isinstance(logger, list) and all(isinstance(n, str) for n in logger)),
           f"logger must be a name or a list of names among {known} (got {logger}); e.g. logger=[tensorboard,mlflow]")
    for name in tracker_names(logger):
        _check(name in TRACKERS, f"logger must be among {known} (got '{name}'); e.g. logger=mlflow")
    _check(cfg.tracker.wandb_mode in WANDB_MODES,
           f"tracker.wandb_mode must be one of {', '.join(WANDB_MODES)} (got '{cfg.tracker.wandb_mode}')")


def validate(cfg: Any) -> None:
    """Reject values no run can use; each message names the key and a valid example."""
    _check_numbers(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg)
    _check_seed(cfg.seed, "seed")
    _check_seed(cfg.dataset.noise_seed, "dataset.noise_seed")
    _validate_latency(cfg.latency)
    _check(bool(DEVICE_PATTERN.match(str(cfg.device))),
           f"device must be auto, cpu, cuda, cuda:N or mps (got '{cfg.device}')")
    _check(cfg.epochs >= 1, f"epochs must be >= 1 (got {cfg.epochs}); try epochs=10")
    _validate_logger(cfg)
    _check(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, 0 meaning never (got {cfg.checkpoint_every})")
    _check(cfg.checkpoint_min_seconds >= 0, "checkpoint_min_seconds must be >= 0, 0 meaning every due epoch "
           f"(got {cfg.checkpoint_min_seconds})")
    _check(0 <= cfg.threads <= MAX_THREADS, f"threads must be in [0, {MAX_THREADS}], 0 meaning torch's default "
           f"(got {cfg.threads})")
    validate_dataset(cfg.dataset)
    if "teacher" in cfg:
        _validate_teacher(cfg)
        _validate_model(cfg.teacher, "teacher")
        _validate_input(cfg.teacher, "teacher", cfg.dataset)
    if "student" in cfg:
        _validate_model(cfg.student, "student")
        _validate_input(cfg.student, "student", cfg.dataset)
        init = cfg.student.get("init")
        _check(not init or Path(init).expanduser().is_file(), f"student.init={init} is not a file; pass a checkpoint "
               "(a run's checkpoint.pt, RepDistiller's, mdistiller's or a state_dict) or drop student.init")
    if "optim" in cfg:
        _validate_optim(cfg.optim, "optim")
    if "T" in cfg:
        _check(cfg.T > 0, f"T must be > 0 (got {cfg.T}); the temperature divides the logits, try T=4")
        _check(cfg.alpha is None or 0 <= cfg.alpha <= 1, f"alpha must be in [0, 1] (got {cfg.alpha}); it weights the KD term, try alpha=0.9")
    if "loss" in cfg:
        _validate_loss(cfg.loss)
    if "deploy" in cfg:
        _validate_deploy(cfg.deploy)
        _validate_quant(cfg)
    if "probe_examples" in cfg:
        _check(cfg.probe_examples >= 2, f"probe_examples must be >= 2 (got {cfg.probe_examples}); try probe_examples=512")
    if "temperatures" in cfg:
        _check(len(cfg.temperatures) > 0 and all(t > 0 for t in cfg.temperatures),
               f"temperatures must be a non-empty list of values > 0 (got {list(cfg.temperatures)}); try temperatures=[1,4,10]")
        _check(cfg.matrix_T > 0, f"matrix_T must be > 0 (got {cfg.matrix_T}); try matrix_T=4")
        _check(cfg.examples >= 1, f"examples must be >= 1 (got {cfg.examples})")


def _validate_latency(latency: Any) -> None:
    _check(latency.batch_size >= 0, f"latency.batch_size must be >= 0, 0 meaning the training batch size "
           f"(got {latency.batch_size})")
    _check(latency.warmup >= 0, f"latency.warmup must be >= 0 (got {latency.warmup})")
    _check(latency.min_reps >= 1, f"latency.min_reps must be >= 1 (got {latency.min_reps}): with none, "
           "nothing is timed; try latency.min_reps=20")
    _check(0 <= latency.min_seconds <= latency.max_seconds, "latency.min_seconds must be >= 0 and at most "
           f"latency.max_seconds (got {latency.min_seconds} and {latency.max_seconds})")
    _check(latency.max_seconds > 0, f"latency.max_seconds must be > 0 (got {latency.max_seconds}); try 3")
    _check(latency.max_spread > 0, f"latency.max_spread must be > 0 (got {latency.max_spread}); try 0.5")


def _validate_deploy(deploy: Any) -> None:
    _check(deploy.calibration_batches >= 1, "deploy.calibration_batches must be >= 1 (got "
           f"{deploy.calibration_batches}): INT8 ranges come from training batches; try 8, or deploy.int8=false")
    _check(0 < deploy.tolerance < 1, f"deploy.tolerance must be in (0, 1) (got {deploy.tolerance}); the check is "
           "ONNX Runtime vs PyTorch logits in float32, try 1e-4")


QUANT_MODES = ("none", "qat")


def _validate_quant(cfg: Any) -> None:
    student = cfg.student
    _check(student.quant in QUANT_MODES, f"student.quant must be one of {', '.join(QUANT_MODES)} (got "
           f"'{student.quant}'); qat trains the student fake-quantized to INT8")
    _check(0 <= student.qat_epochs <= cfg.epochs, f"student.qat_epochs must be in [0, epochs={cfg.epochs}], 0 "
           f"meaning all of them (got {student.qat_epochs})")
    _check(student.quant != "qat" or cfg.deploy.int8, "student.quant=qat trains the student for INT8 and exports "
           "it: leave deploy.int8=true")


def validate_dataset(dataset: Any) -> None:
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
    _check(cfg.teacher.outputs in TEACHER_OUTPUTS, f"teacher.outputs must be one of {', '.join(TEACHER_OUTPUTS)} "
           f"(got '{cfg.teacher.outputs}'); store keeps the teacher's top-k logits per (sample, epoch)")
    _check(cfg.teacher.top_k >= 1, f"teacher.top_k must be >= 1 (got {cfg.teacher.top_k}); try teacher.top_k=10")
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


ANY_INPUT = ("mlp", "custom")  # mlp flattens whatever it gets; a custom model's code alone knows its input
SIGNAL_MODELS = ("cnn1d",)  # (channels, length); every other model (CIFAR nets, tv_*, timm_*) takes images
EXAMPLES = {2: "1-D signals (channels, length)", 3: "images (channels, height, width)"}
FOR_SIGNALS = {"teacher": "teacher=cnn1d", "student": "student=mlp or student=cnn1d_small"}
FOR_IMAGES = {"teacher": "teacher=resnet56", "student": "student=resnet8"}


def example_rank(dataset: Any) -> int | None:
    """The dimensions of one example, read from the config: MNIST-1D's (1, 40) signals, a fake set's `shape`,
    images for every other dataset; None where the config does not say."""
    if dataset.name == "mnist1d":
        return 2
    if dataset.name == "fake":
        shape = dataset.kwargs.get("shape")
        return None if shape is None else len(shape)
    return 3


def _validate_input(model: Any, key: str, dataset: Any) -> None:
    """A model that cannot take the dataset's examples, refused before a run starts (else after the teacher trains)."""
    rank = example_rank(dataset)
    if model.name in ANY_INPUT or rank is None:
        return
    wants = 2 if model.name in SIGNAL_MODELS else 3
    fix = {2: f"pick an image dataset (e.g. dataset=cifar100) or a {key} for them ({FOR_SIGNALS[key]})",
           3: f"pick a {key} for images (e.g. {FOR_IMAGES[key]}) or a 1-D dataset (dataset=mnist1d)"}
    _check(rank == wants, f"{key} {model.name} takes {EXAMPLES[wants]}, but dataset {dataset.name} gives "
           + EXAMPLES.get(rank, f"examples of {rank} dimension(s)") + "; "
           + fix.get(rank, f"give dataset.kwargs.shape as [channels, length] or [channels, height, width], or "
                           f"{key}=mlp (any shape)"))


def _validate_loss(loss: Any) -> None:
    """The name here; the method's options by its own schema (kdrun.methods.parse_params, which needs torch)."""
    names = method_names()
    _check(loss.get("name") in names, f"unknown loss '{loss.get('name')}'; choose one of: {', '.join(names)}")
