"""What makes a command's training stoppable and resumable: the `fit` keywords for last.pt and signals."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdrun.core.distributed import context
from kdrun.core.errors import KdrunError
from kdrun.core.files import writes
from kdrun.run.resume import resume_command
from kdrun.run.rundir import LAST, SUMMARY, delete_status, rewrite_metrics
from kdrun.run.signals import active
from kdrun.train.state import StateWriter, load_state

log = logging.getLogger("kdrun")


def stop_hook() -> dict[str, Any]:
    """Only the signal check: for training that cannot be resumed (a teacher trained inside distill)."""
    return {"stop": active()}


def check_world_size(state: dict[str, Any], path: Path, command: str) -> None:
    """A run continues on as many processes as it was saved from: the batch shares and RNG streams depend on it."""
    saved, now = state.get("world_size", 1), context().world_size
    if saved != now:
        raise KdrunError(f"{path} was saved by a run on {saved} process(es) but this one has {now}; resume it on "
                         f"{saved}: {resume_command(command, path.parent, saved)}")


def extension(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """For summary.json, when `resume=RUN_DIR epochs=N` trains a finished run on: how long it was and how its
    schedule went on (read before the run's old summary.json is set aside); else nothing."""
    try:
        before = json.loads((run_dir / SUMMARY).read_text())["epochs"] if cfg.resume else None
    except (OSError, ValueError, KeyError):
        return {}
    if before is None or before >= cfg.epochs:
        return {}
    schedule = cfg.optim.schedule
    how = (f"cosine recomputed for {cfg.epochs} epochs from epoch {before + 1} (epochs 1-{before} followed the "
           f"{before}-epoch cosine)" if schedule == "cosine" else f"{schedule}: as a {cfg.epochs}-epoch run's")
    log.info("Extending %s from %d to %d epochs; schedule: %s", run_dir, before, cfg.epochs, how)
    return {"extended": {"from_epochs": before, "to_epochs": cfg.epochs, "schedule": how}}


def training_hooks(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """`fit` keywords that make this run's training resumable: last.pt writer, resume state, stop flag."""
    path = run_dir / LAST
    state = None
    if cfg.resume:
        if writes():
            (run_dir / SUMMARY).unlink(missing_ok=True)  # an extended run is unfinished until its new end
        state = load_state(path)
        check_world_size(state, path, cfg.command)
        rewrite_metrics(run_dir, state["history"])  # drop rows written after the checkpoint
        log.info("Resuming from %s: %d epochs done, %d steps into the next", path, state["epoch"], state["step"])
        delete_status(run_dir)
    return {"state": state, "checkpoint": StateWriter(path),
            "checkpoint_every": cfg.checkpoint_every, "checkpoint_min_seconds": cfg.checkpoint_min_seconds,
            **stop_hook()}
