"""A stacked group of distill or train-student jobs: one dataset, one teacher, one training loop.

The launcher (`hydra/launcher=stacked`) calls this in three steps: `open_job` inside each
job's own Hydra context (its `.hydra/`, its log file; the run dir held, the resume state
read), `train_group` once for the group (data, teacher, the stacked training of
`kdrun.sweep.stacked`), and `close_job` per job (its checkpoint.pt and summary.json, exactly as a
job run alone writes them, logged to its own file).
"""

from __future__ import annotations

import logging
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig

from kdrun.commands import distill, train_student
from kdrun.commands.record import epoch_recorder, model_cost, pair_cost
from kdrun.commands.resumable import training_hooks
from kdrun.commands.setup import Setup, build_student, log, setup
from kdrun.commands.train_student import save_student
from kdrun.core.console import epoch_extra, epoch_progress
from kdrun.core.errors import Interrupted
from kdrun.run.failure import fail
from kdrun.run.resume import resume_command
from kdrun.run.rundir import owned, tidy_finished, write_status
from kdrun.run.signals import report_interrupted, stop_on_signals
from kdrun.sweep.stacked import Member, fit_group
from kdrun.train.recipe import recipe_from_optim


@dataclass
class Job:
    """One job of a group: its config, run dir, log file handlers, and (after training) its outcome."""

    cfg: DictConfig
    run_dir: Path
    log_files: list[logging.Handler]
    hooks: dict[str, Any]
    held: ExitStack  # the run dir's lock (kdrun.run.rundir.owned), from open_job to close_job
    member: Optional[Member] = None
    extras: dict[str, Any] = field(default_factory=dict)  # its checkpoint's result; distill: loss, teacher statistics


@dataclass
class Shared:
    """What the group's jobs share once trained: the data and device, and for distill the teacher."""

    env: Setup
    teacher: Any = None
    facts: Any = None
    cost: Any = None  # the student's (and teacher's) latency, measured once for the group after training


@contextmanager
def logging_to(handlers: list[logging.Handler]) -> Iterator[None]:
    """Send log records to `handlers` only (one job's log file, or the console) for a while."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = list(handlers)
    try:
        yield
    finally:
        root.handlers = saved


def open_job(cfg: DictConfig, run_dir: Path) -> Job:
    """Inside the job's Hydra context: hold its run dir, find its log file, load its resume state if `resume=` is set."""
    held = ExitStack()
    held.enter_context(owned(run_dir))
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return Job(cfg, run_dir, files, training_hooks(cfg, run_dir), held)


def _member(job: Job, shared: Shared) -> Member:
    cfg, env = job.cfg, shared.env
    student = build_student(cfg, env)
    kd = probe_T = None
    if cfg.command == "distill":
        stats = distill.job_stats(cfg, env, shared.facts)
        job.extras.update(loss=distill.job_loss(cfg, env, stats, shared.teacher.model, student), stats=stats)
        kd = (float(cfg.T), *distill.loss_weights(cfg)) if cfg.loss.name == "kd" else None
        probe_T = float(cfg.T) if cfg.probe else None  # the group's probe runs for all its jobs at once
    record = epoch_recorder(job.run_dir, "student", cfg.epochs)

    def on_epoch(row: dict[str, float]) -> None:
        with logging_to(job.log_files):
            record(row)

    return Member(student, recipe_from_optim(cfg.optim, cfg.epochs, cfg.seed), kd, probe_T, on_epoch,
                  job.hooks["checkpoint"], job.hooks["state"])


def _group_line(jobs: list[Job]) -> Any:
    """One console line per epoch for the whole group."""

    def line(epoch: int) -> None:
        accuracies = [j.member.history[-1]["test_acc"] for j in jobs if j.member.history and not j.member.failed]
        if accuracies:
            epochs = jobs[0].cfg.epochs
            log.info("stacked group of %d (%s): epoch %d/%d, test acc %.2f%%-%.2f%%", len(jobs),
                     jobs[0].cfg.student.name, epoch, epochs, 100 * min(accuracies), 100 * max(accuracies),
                     extra=epoch_extra(epoch, epochs))

    return line


def train_group(jobs: list[Job]) -> Shared:
    """Set up once, train every job's student in one stacked loop; SIGINT/SIGTERM checkpoint them all."""
    first = jobs[0].cfg
    console = [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)]
    with logging_to(console + [h for job in jobs for h in job.log_files]):
        log.info("Training %d jobs as one stacked model: %s", len(jobs), ", ".join(str(j.run_dir) for j in jobs))
        shared = Shared(setup(first))
        if first.command == "distill":
            shared.teacher, shared.facts = distill.prepare_teacher(first, shared.env)
        for job in jobs:
            job.member = _member(job, shared)
    members = [job.member for job in jobs]
    with logging_to(console), stop_on_signals() as stop, epoch_progress(first.progress, "stacked") as progress:
        try:
            fit_group(members, shared.env.data, shared.env.device,
                      teacher_logits=shared.facts.train_logits if shared.facts else None,
                      probe=distill.probe_set(first, shared.env, shared.facts.train_logits) if shared.facts else None,
                      checkpoint_every=first.checkpoint_every, checkpoint_min_seconds=first.checkpoint_min_seconds,
                      progress=progress, stop=stop, after_epoch=_group_line(jobs))
        except Interrupted as interrupted:
            stop_group(jobs, interrupted, stop.exit_code)
    for job in jobs:
        job.hooks["checkpoint"].flush()
    _save_students(jobs, shared)
    shared.cost = _group_cost(jobs, shared)
    return shared


def _group_cost(jobs: list[Job], shared: Shared) -> dict[str, Any]:
    """One measurement for the group: its jobs share the architecture and the moment, so each records it."""
    first, student = jobs[0].cfg, jobs[0].member.model
    if first.command == "distill":
        cost = pair_cost(first, shared.env, shared.teacher.model, student)
        for latency in cost["latency"].values():
            latency["measured"] = f"once for its stacked group of {len(jobs)} jobs"
        return cost
    cost = model_cost(student, shared.env.data, first, shared.env.device)
    cost["latency"]["measured"] = f"once for its stacked group of {len(jobs)} jobs"
    return cost


def _save_students(jobs: list[Job], shared: Shared) -> None:
    """Every trained job's checkpoint.pt, written in parallel: each write ends in an fsync, which is
    what a job's closing costs on a busy disk, and threads wait for their disks side by side."""
    trained = [job for job in jobs if not job.member.failed]
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="kdrun-checkpoint") as pool:
        results = list(pool.map(lambda job: save_student(job.cfg, job.run_dir, job.member.model, shared.env.data,
                                                         job.member.history), trained))
    for job, result in zip(trained, results):
        job.extras["result"] = result


def stop_group(jobs: list[Job], interrupted: Interrupted, code: int) -> None:
    """Every job of the group interrupted at the same step, each resumable alone; exit 130/143."""
    for job in jobs:
        write_status(job.run_dir, "interrupted", epoch=interrupted.epoch, step=interrupted.step,
                     resume=resume_command(job.cfg.command, job.run_dir))
    report_interrupted(f"kdrun: stacked group of {len(jobs)} interrupted in epoch {interrupted.epoch} after step "
                       f"{interrupted.step}, every job's state saved to its last.pt; resume the sweep with: "
                       f"{resume_command(jobs[0].cfg.command, jobs[0].run_dir.parent)}")
    sys.exit(code)


def close_job(job: Job, shared: Shared) -> float:
    """checkpoint.pt and summary.json, as a job run alone writes them, its log lines in its own log.

    A job whose loss turned non-finite fails as a job of a sweep does (kdrun.run.task): status.json
    `failed`, one line on stderr, NaN returned, so the other jobs go on.
    """
    cfg, member = job.cfg, job.member
    console = [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)]
    with job.held, logging_to(console + job.log_files):
        if member.failed:
            fail(member.failed, job.run_dir, rerun_fixes=False)  # a stacked job fails only by diverging
            return math.nan
        result = job.extras["result"]
        if cfg.command == "distill":
            value = distill.finish(cfg, shared.env, job.run_dir, shared.teacher, shared.facts, job.extras["stats"],
                                   job.extras["loss"], member.model, result, cost=shared.cost)
        else:
            value = train_student.finish(cfg, shared.env, job.run_dir, member.model, result, cost=shared.cost)
        tidy_finished(job.run_dir, cfg.keep_last)
        return value
