"""`kdrun train-teacher`: train the teacher for a recipe (or reuse the stored one)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from kdrun.commands.record import epoch_recorder, history_summary, model_cost, plain_config, run_header
from kdrun.commands.resumable import training_hooks
from kdrun.commands.setup import log, setup
from kdrun.core.console import epoch_progress, show_results
from kdrun.core.files import writes
from kdrun.run.rundir import CHECKPOINT, objective, rewrite_metrics, write_summary
from kdrun.teachers.store import obtain_teacher


def link_or_copy(source: Path, target: Path) -> None:
    """A run dir's own handle on the stored checkpoint, without a second copy where possible (rank 0 only).

    A resumed run may already hold it (linked before it was killed): then nothing is left to do."""
    if not writes() or (target.exists() and target.samefile(source)):
        return
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def run(cfg: DictConfig, run_dir: Path) -> float:
    cfg.teacher.train.epochs, cfg.teacher.train.seed = cfg.epochs, cfg.seed
    env = setup(cfg)
    with epoch_progress(cfg.progress, "teacher") as progress:
        teacher = obtain_teacher(cfg.teacher, cfg.dataset, env.data, env.device, plain_config(cfg), progress,
                                 epoch_recorder(run_dir, "teacher", cfg.epochs), fit_hooks=training_hooks(cfg, run_dir))
    if not teacher.trained_now:
        log.info("Reused the stored teacher: %s (retrain by deleting it)", teacher.checkpoint)
        rewrite_metrics(run_dir, teacher.history)  # also over rows a resumed attempt wrote before it was killed
    link_or_copy(teacher.checkpoint, run_dir / CHECKPOINT)
    cost = model_cost(teacher.model, env.data, cfg, env.device)
    summary = {**run_header(cfg, run_dir, env), "model": cfg.teacher.name, **history_summary(teacher.history),
               "test_acc": teacher.test_acc, **cost, "checkpoint": str(teacher.checkpoint),
               "reused": not teacher.trained_now}
    write_summary(run_dir, summary)
    show_results([{"role": "teacher", "model": cfg.teacher.name, **summary}], title="kdrun train-teacher",
                 notes=[f"run dir: {run_dir}", f"stored teacher: {teacher.checkpoint}"])
    return objective(summary)
