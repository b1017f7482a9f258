"""What a run records: each epoch (metrics.jsonl, the trackers of `logger=`, a log line), its history summed up, the
header every summary.json starts with, and what the models cost."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

import kdrun
from kdrun.commands.setup import Setup
from kdrun.core.console import epoch_extra
from kdrun.measure.latency import Protocol, measure_models, profile, size
from kdrun.run.rundir import append_metrics
from kdrun.trackers import current as trackers

log = logging.getLogger("kdrun")


def epoch_line(label: str, epochs: int) -> Callable[[dict[str, float]], None]:
    """One log line per epoch, prefixed by whose epoch it is (`teacher epoch 3: ...`); of `epochs`, the console
    shows ten at most (kdrun.core.console.epoch_extra)."""

    def line(row: dict[str, float]) -> None:
        log.info("%s epoch %d/%d: loss %.4f, test acc %.2f%% (%.1fs)", label, row["epoch"], epochs,
                 row["train_loss"], 100 * row["test_acc"], row["seconds"], extra=epoch_extra(int(row["epoch"]), epochs))

    return line


def epoch_recorder(run_dir: Path, label: str, epochs: int) -> Callable[[dict[str, float]], None]:
    """Append each epoch to metrics.jsonl (always), the run's trackers (`logger=`), and log one line."""
    say = epoch_line(label, epochs)

    def record(row: dict[str, float]) -> None:
        append_metrics(run_dir, row)
        trackers().log_epoch(label, row)
        say(row)

    return record


def history_summary(history: list[dict[str, float]]) -> dict[str, Any]:
    """Final accuracy (top-1, and top-5 with 5 classes or more), the best epoch picked on the test set (`best_test_acc`, optimistic: selection on
    test, as published tables do), and with a validation split the honest pick: `test_acc_at_best_val`."""
    best = max(history, key=lambda row: row["test_acc"])
    summary = {"test_acc": history[-1]["test_acc"], "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
               "train_seconds": sum(row["seconds"] for row in history)}
    if "test_top5" in history[-1]:  # 5 classes or more
        summary["test_top5"] = history[-1]["test_top5"]
    if "val_acc" in history[0]:
        by_val = max(history, key=lambda row: row["val_acc"])  # the first of equal epochs
        summary.update(best_val_acc=by_val["val_acc"], best_val_epoch=by_val["epoch"],
                       test_acc_at_best_val=by_val["test_acc"])
        if "test_top5" in by_val:
            summary["test_top5_at_best_val"] = by_val["test_top5"]
    return summary


def latency_protocol(cfg: DictConfig) -> Protocol:
    """The `latency` settings; batch_size 0 means the run's training batch size."""
    lat = cfg.latency
    training_batch = cfg.optim.batch_size if "optim" in cfg else cfg.teacher.train.optim.batch_size
    return Protocol(lat.batch_size or training_batch, lat.warmup, lat.min_reps, lat.min_seconds, lat.max_seconds,
                    lat.max_spread)


def warn_if_contended(latency: dict[str, Any]) -> None:
    """One line when the times were taken on a busy or noisy machine (summary.json says so too)."""
    if latency["contended"]:
        log.warning("latency measured under contention (%s; load %s -> %s on %d CPUs): times and speedup may be "
                    "off; measure on a quiet machine, or raise latency.max_spread", latency["contended_because"],
                    latency["load_before"], latency["load_after"], latency["machine_cpus"])


def model_cost(model: torch.nn.Module, data: Any, cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Params, FLOPs and latency of one model, measured now, alone."""
    cost = profile(model, data.input_shape, device, latency_protocol(cfg))
    warn_if_contended(cost["latency"])
    return cost


def pair_cost(cfg: DictConfig, env: Setup, teacher: torch.nn.Module, student: torch.nn.Module) -> dict[str, Any]:
    """The student's params and FLOPs, and both models' latency measured now, interleaved (the speedup with its
    interval): `{"student": {params, flops}, "latency": {"teacher": ..., "student": ...}, "speedup": ...}`."""
    measured = measure_models({"teacher": teacher, "student": student}, env.data.input_shape, env.device,
                              latency_protocol(cfg))
    warn_if_contended(measured["latency"]["student"])
    return {"student": size(student, env.data.input_shape, env.device), **measured}


def absolute_paths(cfg: DictConfig) -> dict[str, str]:
    """Every path the run used, absolute: where its data and teacher came from, whatever the cwd is later."""
    paths = {"cwd": str(Path.cwd()), "data_dir": cfg.dataset.data_dir}
    if "teacher" in cfg:
        paths.update(teacher_store=cfg.teacher.store, teacher_checkpoint=cfg.teacher.checkpoint)
    if "student" in cfg:
        paths.update(student_init=cfg.student.get("init"))
    return {k: str(Path(v).expanduser().resolve()) for k, v in paths.items() if v}


def run_header(cfg: DictConfig, run_dir: Path, env: Setup) -> dict[str, Any]:
    """What every summary.json starts with: the run, where its inputs came from, versions, and its threads."""
    return {"command": cfg.command, "dataset": cfg.dataset.name, "seed": cfg.seed, "epochs": cfg.epochs,
            "run_dir": str(run_dir), "paths": absolute_paths(cfg), "kdrun_version": kdrun.__version__,
            "torch_version": torch.__version__, "threads": asdict(env.threads)}


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


EpochHook = Callable[[dict[str, float]], None]


def chain(*hooks: EpochHook) -> EpochHook:
    """One on_epoch callback calling `hooks` in order (earlier ones may add keys to the row)."""

    def run(row: dict[str, float]) -> None:
        for hook in hooks:
            hook(row)

    return run
