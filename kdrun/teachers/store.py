"""The teacher store: one checkpoint per teacher recipe, trained at most once.

A recipe is the teacher's model, the dataset and the training hyper-parameters and seed;
its stable hash names the file `<store>/<model>-<dataset>-<hash>.pt`. `obtain_teacher`
resolves, in order: an explicit checkpoint path (any format kdrun/models/checkpoint.py reads);
pretrained weights (`teacher.weights`, torchvision's or timm's); the stored checkpoint for
the recipe; else it trains the teacher now, under a file lock so that parallel jobs of a
sweep train it once, writing to a temporary file and renaming it so nobody reads half a
checkpoint. A teacher that is loaded rather than trained is evaluated on the test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.core import distributed
from kdrun.core.errors import KdrunError
from kdrun.core.runtime import seed_everything
from kdrun.data.stream import folder_fingerprint
from kdrun.methods.losses import cross_entropy, smoothed_cross_entropy
from kdrun.models import build_pretrained, build_viewed, model_kwargs, view_pretrained
from kdrun.models.checkpoint import Weights, file_sha256, load_weights, read_weights, save_checkpoint
from kdrun.models.views import stream_normalisation, view_settings
from kdrun.train.engine import StepProgress, fit
from kdrun.train.evaluate import evaluate
from kdrun.train.recipe import recipe_from_optim

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    model: nn.Module
    checkpoint: Path
    test_acc: float
    trained_now: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # the file's format and sha256 (and pretrained weights)


def teacher_recipe(teacher: DictConfig, dataset: DictConfig) -> dict[str, Any]:
    """What makes two teachers the same; paths and switches are left out on purpose.

    Label noise, the teacher's label smoothing and a streamed set's image size count only when set,
    so a teacher keeps the hash it had before those options existed (stored teachers stay valid).
    An image folder's path and content (`folder_fingerprint`) are its identity, so they count.
    """
    train = OmegaConf.to_container(teacher.train, resolve=True)
    if not train.get("label_smoothing"):
        train.pop("label_smoothing", None)
    data = {"name": dataset.name, "augment": dataset.augment, "kwargs": OmegaConf.to_container(dataset.kwargs, resolve=True)}
    if dataset.get("val_split"):  # the teacher trains on what the student trains on: the split is held out
        data.update(val_split=dataset.val_split, val_seed=dataset.get("val_seed", 0))
    if dataset.get("label_noise"):
        data.update(label_noise=dataset.label_noise, noise_seed=dataset.get("noise_seed", 0))
    if dataset.get("image_size"):
        data["image_size"] = dataset.image_size
    if dataset.name == "image_folder":  # a user's folder is the dataset itself
        data["data_dir"] = str(Path(dataset.data_dir).expanduser().resolve())
        data["content"] = folder_fingerprint(Path(data["data_dir"]))
    recipe = {"model": teacher.name, "kwargs": OmegaConf.to_container(teacher.kwargs, resolve=True),
              "dataset": data, "train": train}
    if view_settings(teacher.get("view")):  # only when set: teachers stored before views keep their hash
        recipe["view"] = view_settings(teacher.view)
    return {**recipe, "target": teacher.target} if teacher.get("target") else recipe


def store_path(store: Path, recipe: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return store / f"{recipe['model']}-{recipe['dataset']['name']}-{digest}.pt"


def snapshot_path(path: Path, epoch: int) -> Path:
    """The stored teacher after `epoch` of its recipe: `<stem>-e<epoch>.pt` beside the full one."""
    return path.with_name(f"{path.stem}-e{epoch}.pt")


def train_teacher(teacher: DictConfig, data: Any, device: Any, progress: Optional[StepProgress] = None,
                  on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
                  snapshots: Optional[dict[int, Callable[[nn.Module, dict], None]]] = None,
                  fit_hooks: Optional[dict[str, Any]] = None) -> tuple[nn.Module, list[dict]]:
    """Train a fresh teacher on hard labels (smoothed if its recipe says so) with its own recipe and seed.

    `snapshots` maps an epoch to a function called with the model and that epoch's row (to save it);
    `fit_hooks` reach the engine (stop/checkpoint/resume).
    """
    seed_everything(teacher.train.seed)
    model = build_viewed(teacher.name, data.num_classes, data.input_shape, stream_normalisation(data),
                         model_kwargs(teacher), teacher.get("view")).to(device)
    recipe = recipe_from_optim(teacher.train.optim, teacher.train.epochs, teacher.train.seed)
    smoothing = float(teacher.train.get("label_smoothing", 0.0))
    loss = smoothed_cross_entropy(smoothing) if smoothing > 0 else cross_entropy

    def epoch_done(row: dict[str, float]) -> None:
        if snapshots and row["epoch"] in snapshots:
            snapshots[row["epoch"]](model, row)
        if on_epoch:
            on_epoch(row)

    history = fit(model, data, recipe, device, loss=loss, progress=progress, on_epoch=epoch_done, **(fit_hooks or {}))
    return model, history


def _check_recorded(weights: Weights, path: Path, expected_arch: str, data: Any) -> None:
    """What the file records about its model (kdrun: everything; RepDistiller's `opt`: model, dataset)."""
    if weights.arch is not None and weights.arch != expected_arch:
        raise KdrunError(f"{path} holds a '{weights.arch}' but teacher={expected_arch}; "
                         f"set teacher={weights.arch} or pass a {expected_arch} checkpoint")
    if weights.num_classes is not None and weights.num_classes != data.num_classes:
        raise KdrunError(f"{path} was trained for {weights.num_classes} classes but dataset '{data.name}' has "
                         f"{data.num_classes}; pass a teacher trained on '{data.name}'")
    if weights.input_shape is not None and tuple(weights.input_shape) != data.input_shape:
        raise KdrunError(f"{path} expects inputs of shape {tuple(weights.input_shape)} but dataset "
                         f"'{data.name}' has {data.input_shape}; pass a teacher trained on '{data.name}'")
    if weights.dataset is not None and weights.dataset != data.name:
        raise KdrunError(f"{path} was trained on '{weights.dataset}' but dataset={data.name}; "
                         f"pass a teacher trained on '{data.name}' (or set dataset={weights.dataset})")


def _check_kwargs(saved: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """A file that records its model's options (kdrun's own) must match teacher.kwargs: otherwise the run
    would distill from another model than the one its config and summary describe."""
    differ = [k for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    if differ:
        raise KdrunError(f"{path} was built with " + ", ".join(f"teacher.kwargs.{k}={saved.get(k)}" for k in differ)
                         + " but the config says " + ", ".join(f"{config.get(k)}" for k in differ)
                         + "; set those keys to the checkpoint's values or pass the matching checkpoint")


def load_teacher(path: Path, teacher: DictConfig, data: Any, device: Any) -> Teacher:
    """A teacher from a checkpoint file, evaluated on the test set; kdrun's own files rebuild the model
    with the options they record, the others with teacher=/teacher.kwargs."""
    weights = read_weights(path)
    _check_recorded(weights, path, teacher.name, data)
    if weights.arch_kwargs is not None:
        _check_kwargs(weights.arch_kwargs, model_kwargs(teacher), path)
    kwargs = weights.arch_kwargs if weights.arch_kwargs is not None else model_kwargs(teacher)
    model = build_viewed(teacher.name, data.num_classes, data.input_shape, stream_normalisation(data), kwargs,
                         teacher.get("view"))
    load_weights(model, weights.state_dict, f"{path} ({weights.format} format)")
    model.to(device)
    log.info("Teacher %s from %s (%s format, sha256 %s)", teacher.name, path, weights.format, weights.sha256[:12])
    return Teacher(model, path, evaluate(model, data, device), history=weights.metrics.get("history", []),
                   source={"format": weights.format, "sha256": weights.sha256})


def pretrained_teacher(teacher: DictConfig, data: Any, device: Any) -> Teacher:
    """torchvision's or timm's pretrained weights (`teacher.weights`), evaluated on the test set."""
    model, path, family = build_pretrained(teacher.name, teacher.weights, data.num_classes, data.input_shape,
                                           model_kwargs(teacher))
    view_pretrained(model, data.input_shape, stream_normalisation(data), teacher.get("view")).to(device)
    return Teacher(model, path, evaluate(model, data, device),
                   source={"format": family, "weights": teacher.weights, "sha256": file_sha256(path) if path else None})


def train_command_hint(teacher: DictConfig, dataset: DictConfig) -> str:
    return (f"kdrun train-teacher dataset={dataset.name} teacher={teacher.name} "
            f"epochs={teacher.train.epochs} seed={teacher.train.seed}")


def remove_stale_temps(path: Path) -> None:
    """Temp files of a job killed mid-write (`.<name>.*.tmp`, never matching `*.pt`); call with the lock held."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        log.info("Removing a temp file left by a killed job: %s", stale)
        stale.unlink(missing_ok=True)


@contextmanager
def store_turn(path: Path, wanted: Path) -> Iterator[bool]:
    """Hold the store's lock for `path` and say whether `wanted` is there now (trained by another job).

    In a job of several processes rank 0 takes the lock and tells the others what it found, through the
    job's store rather than a collective, so they can wait as long as another job keeps the lock; then
    all ranks load the teacher, or train it together (only rank 0 writes it).
    """
    key = f"teacher/{wanted.name}"
    if not distributed.context().is_main:
        yield distributed.wait_for(key) == "stored"
        return
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        stored = wanted.exists()
        distributed.publish(key, "stored" if stored else "train")
        if not stored:
            remove_stale_temps(path)
        yield stored


def obtain_teacher(teacher: DictConfig, dataset: DictConfig, data: Any, device: Any, config: dict,
                   progress: Optional[StepProgress] = None,
                   on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
                   epoch: Optional[int] = None, fit_hooks: Optional[dict[str, Any]] = None) -> Teacher:
    """An explicit checkpoint, else the stored one for this recipe, else train and store it.

    With `epoch`, the snapshot after that epoch of the recipe (`<stem>-e<epoch>.pt`); a stored
    full teacher without that snapshot is trained again (same recipe, same seed) to make it.
    `fit_hooks` reach the engine when the teacher is trained here (signals, and for
    train-teacher its run's last.pt). A job killed while it holds the lock leaves no
    half-written file: the lock is an flock the OS releases with the process, and the
    checkpoint appears only by rename; the next holder removes the dead job's temp files.
    """
    if teacher.checkpoint:
        return load_teacher(Path(teacher.checkpoint).expanduser().resolve(), teacher, data, device)
    if teacher.get("weights"):
        return pretrained_teacher(teacher, data, device)
    recipe = teacher_recipe(teacher, dataset)
    path = store_path(Path(teacher.store).expanduser().resolve(), recipe)
    wanted = snapshot_path(path, epoch) if epoch is not None else path
    if wanted.exists():
        log.info("Using stored teacher %s", wanted)
        return load_teacher(wanted, teacher, data, device)
    if not teacher.train_if_missing:
        raise KdrunError(f"no trained teacher for this recipe in {path.parent}; run "
                         f"`{train_command_hint(teacher, dataset)}` first (or set teacher.train_if_missing=true)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with store_turn(path, wanted) as stored:
        if stored:  # another job trained it while we waited for the lock
            log.info("Using teacher trained by a parallel job: %s", wanted)
            return load_teacher(wanted, teacher, data, device)
        if path.exists():
            log.info("Stored teacher %s has no snapshot after epoch %s: training its recipe again to make one",
                     path, epoch)
        log.info("Training teacher %s for recipe %s", teacher.name, path.stem)
        meta = dict(arch=teacher.name, arch_kwargs=model_kwargs(teacher), num_classes=data.num_classes,
                    input_shape=data.input_shape, dataset=dataset.name, config={"recipe": recipe, "run": config})
        snapshots = {}
        if epoch is not None:
            snapshots[epoch] = lambda model, row: save_checkpoint(
                wanted, model, **meta, metrics={"test_acc": row["test_acc"], "epoch": epoch})
        model, history = train_teacher(teacher, data, device, progress, on_epoch, snapshots, fit_hooks)
        test_acc = history[-1]["test_acc"]
        if not path.exists():
            save_checkpoint(path, model, **meta, metrics={"test_acc": test_acc, "history": history})
        distributed.barrier()  # ranks that trained it with rank 0 read the file rank 0 has just written
    if epoch is not None:
        snapshot = load_teacher(wanted, teacher, data, device)
        snapshot.trained_now, snapshot.history = True, history[:epoch]
        return snapshot
    return Teacher(model, path, test_acc, trained_now=True, history=history,
                   source={"format": "kdrun", "sha256": file_sha256(path)})
