"""Steps every command shares: set up the runtime and data, record epochs, sum up a history."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

import kdrun
from kdrun.data import TensorData, holdout, load_dataset
from kdrun.data.noise import with_label_noise
from kdrun.core.distributed import context, device_for
from kdrun.train.engine import fit
from kdrun.core.errors import KdrunError
from kdrun.measure.latency import profile
from kdrun.methods.losses import cross_entropy
from kdrun.methods import Method, as_method
from kdrun.models import build_model, model_kwargs
from kdrun.run.resume import resume_command
from kdrun.run.signals import active
from kdrun.models.checkpoint import save_checkpoint
from kdrun.run.rundir import CHECKPOINT, LAST, append_metrics, delete_status, rewrite_metrics
from kdrun.core.files import writes
from kdrun.core.runtime import resolve_device, seed_everything, set_threads
from kdrun.measure.costs import architecture_cost
from kdrun.teachers.store import recipe_from_optim
from kdrun.train.state import StateWriter, load_state
from kdrun.core.console import epoch_progress

log = logging.getLogger("kdrun")


@dataclass
class Setup:
    device: torch.device
    data: Any  # TensorData (in memory) or StreamingData (read by DataLoader workers)
    threads: int


def setup(cfg: DictConfig) -> Setup:
    """Threads, device (one GPU per rank under torchrun) and the dataset (in memory: moved to the device once)."""
    threads = set_threads(cfg.threads)
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
             data.train_size, data.test_size, data.input_shape, data.num_classes, feed, device, threads)
    ctx = context()
    if ctx.distributed:
        batch = cfg.optim.batch_size if "optim" in cfg else cfg.teacher.train.optim.batch_size
        log.info("distributed: rank %d of %d (world size %d); global batch %d = about %d per rank", ctx.rank,
                 ctx.world_size, ctx.world_size, batch, -(-batch // ctx.world_size))
    return Setup(device, data.to(device), threads)


def tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise KdrunError("logger=tensorboard needs the tensorboard package: pip install 'kdrun[tensorboard]'") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def epoch_recorder(run_dir: Path, label: str, logger: str = "none") -> Callable[[dict[str, float]], None]:
    """Append each epoch to metrics.jsonl (always), TensorBoard (if asked), and log one line."""
    writer = tensorboard_writer(run_dir) if logger == "tensorboard" and writes() else None

    def record(row: dict[str, float]) -> None:
        append_metrics(run_dir, row)
        if writer is not None:
            for key, value in row.items():
                writer.add_scalar(f"{label}/{key}", value, row["epoch"])
            writer.flush()
        log.info("%s epoch %d: loss %.4f, test acc %.2f%% (%.1fs)", label, row["epoch"], row["train_loss"],
                 100 * row["test_acc"], row["seconds"])

    return record


def stop_hook() -> dict[str, Any]:
    """Only the signal check: for training that cannot be resumed (a teacher trained inside distill)."""
    return {"stop": active()}


def check_world_size(state: dict[str, Any], path: Path, command: str) -> None:
    """A run continues on as many processes as it was saved from: the batch shares and RNG streams depend on it."""
    saved, now = state.get("world_size", 1), context().world_size
    if saved != now:
        raise KdrunError(f"{path} was saved by a run on {saved} process(es) but this one has {now}; resume it on "
                         f"{saved}: {resume_command(command, path.parent, saved)}")


def training_hooks(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """`fit` keywords that make this run's training resumable: last.pt writer, resume state, stop flag."""
    path = run_dir / LAST
    state = None
    if cfg.resume:
        state = load_state(path)
        check_world_size(state, path, cfg.command)
        rewrite_metrics(run_dir, state["history"])  # drop rows written after the checkpoint
        log.info("Resuming from %s: %d epochs done, %d steps into the next", path, state["epoch"], state["step"])
        delete_status(run_dir)
    return {"state": state, "checkpoint": StateWriter(path),
            "checkpoint_every": cfg.checkpoint_every, "checkpoint_min_seconds": cfg.checkpoint_min_seconds,
            **stop_hook()}


def history_summary(history: list[dict[str, float]]) -> dict[str, Any]:
    """Final accuracy, the best epoch picked on the test set (`best_test_acc`, optimistic: selection on
    test, as published tables do), and with a validation split the honest pick: `test_acc_at_best_val`."""
    best = max(history, key=lambda row: row["test_acc"])
    summary = {"test_acc": history[-1]["test_acc"], "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
               "train_seconds": sum(row["seconds"] for row in history)}
    if "val_acc" in history[0]:
        by_val = max(history, key=lambda row: row["val_acc"])  # the first of equal epochs
        summary.update(best_val_acc=by_val["val_acc"], best_val_epoch=by_val["epoch"],
                       test_acc_at_best_val=by_val["test_acc"])
    return summary


def latency_options(cfg: DictConfig) -> dict[str, Any]:
    lat = cfg.latency
    return {"batch_size": lat.batch_size, "warmup": lat.warmup, "min_reps": lat.min_reps,
            "min_seconds": lat.min_seconds}


def model_cost(model: torch.nn.Module, data: Any, cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    return profile(model, data.input_shape, device, **latency_options(cfg))


def student_cost(cfg: DictConfig, student: torch.nn.Module, env: Setup) -> dict[str, Any]:
    """The student architecture's cost, measured once per process (its weights do not change it)."""
    return architecture_cost(cfg.student.name, model_kwargs(cfg.student), student, env.data.input_shape, env.device,
                             latency_options(cfg))


def absolute_paths(cfg: DictConfig) -> dict[str, str]:
    """Every path the run used, absolute: where its data and teacher came from, whatever the cwd is later."""
    paths = {"cwd": str(Path.cwd()), "data_dir": cfg.dataset.data_dir}
    if "teacher" in cfg:
        paths.update(teacher_store=cfg.teacher.store, teacher_checkpoint=cfg.teacher.checkpoint)
    return {k: str(Path(v).expanduser().resolve()) for k, v in paths.items() if v}


def run_header(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    return {"command": cfg.command, "dataset": cfg.dataset.name, "seed": cfg.seed, "epochs": cfg.epochs,
            "run_dir": str(run_dir), "paths": absolute_paths(cfg), "kdrun_version": kdrun.__version__,
            "torch_version": torch.__version__}


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


EpochHook = Callable[[dict[str, float]], None]


def chain(*hooks: EpochHook) -> EpochHook:
    """One on_epoch callback calling `hooks` in order (earlier ones may add keys to the row)."""

    def run(row: dict[str, float]) -> None:
        for hook in hooks:
            hook(row)

    return run


def build_student(cfg: DictConfig, env: Setup) -> torch.nn.Module:
    """The student's initial weights: a function of `seed` alone."""
    seed_everything(cfg.seed)
    return build_model(cfg.student.name, env.data.num_classes, env.data.input_shape,
                       model_kwargs(cfg.student)).to(env.device)


def save_student(cfg: DictConfig, run_dir: Path, student: torch.nn.Module, data: TensorData,
                 history: list[dict[str, float]], method: Method | None = None) -> dict[str, Any]:
    """checkpoint.pt for the trained student (with the method's trained parts, if any); its summary
    fields (accuracy, train time, checkpoint path)."""
    result = history_summary(history)
    method_state = {} if method is None else {k: v.detach().cpu() for k, v in method.state_dict().items()}
    save_checkpoint(run_dir / CHECKPOINT, student, arch=cfg.student.name,
                    arch_kwargs=model_kwargs(cfg.student), num_classes=data.num_classes,
                    input_shape=data.input_shape, dataset=data.name, config=plain_config(cfg),
                    metrics={**result, "history": history}, method_state=method_state)
    return {**result, "checkpoint": str(run_dir / CHECKPOINT)}


def train_student(cfg: DictConfig, env: Setup, run_dir: Path, teacher: torch.nn.Module | None = None,
                  make_loss: Callable[[torch.nn.Module], Any] = lambda student: cross_entropy,
                  teacher_logits: torch.Tensor | None = None,
                  epoch_hooks: Callable[[torch.nn.Module], list[EpochHook]] | None = None,
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Seed, build, train (with a teacher if given) and checkpoint the student; the same recipe either way.

    `make_loss(student)` builds the loss (a method may size its connectors from the student);
    `epoch_hooks(student)` gives per-epoch extras (e.g. the gradient probe) run before the epoch is recorded.
    """
    data = env.data
    student = build_student(cfg, env)
    loss = as_method(make_loss(student))
    hooks = epoch_hooks(student) if epoch_hooks else []
    resumable = training_hooks(cfg, run_dir)
    # A method that follows the epoch (DKD's and ReviewKD's warm-up), also across a resume.
    loss.start_epoch(resumable["state"]["epoch"] + 1 if resumable["state"] else 1)
    hooks.append(lambda row: loss.start_epoch(int(row["epoch"]) + 1))
    with epoch_progress(cfg.progress, "student") as progress:
        history = fit(student, data, recipe_from_optim(cfg.optim, cfg.epochs, cfg.seed, cfg.compile), env.device,
                      loss=loss, teacher=teacher, teacher_logits=teacher_logits,
                      on_epoch=chain(*hooks, epoch_recorder(run_dir, "student", cfg.logger)), progress=progress,
                      **resumable)
    resumable["checkpoint"].flush()  # the last last.pt is on disk (or its error raised) before the summary
    return student, save_student(cfg, run_dir, student, data, history, loss)
