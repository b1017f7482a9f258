"""`run_task`: the Hydra task function every command shares, and how a job ends.

A command module exposes `run(cfg, run_dir) -> float` (its final test accuracy, which a
sweeper such as Optuna maximises). Hydra calls `run_task` once per job (a single run or each
job of a sweep) and holds the job's run dir (`kdrun.run.rundir.owned`) while it runs.

How a job ends, the interface a launcher relies on (the basic, joblib and submitit launchers,
and any launcher that runs jobs of a sweep its own way):
- finished: `summary.json` in its run dir; the return value is `kdrun.run.rundir.objective`
  (the best validation accuracy with a validation split, else the final test accuracy).
- failed (a bad value, NaN loss, full disk, out of memory, a missing file, sys.exit() or any
  other error in user code or kdrun, whose traceback goes to the run's log file):
  `status.json` `{"status": "failed", "error": <one line>}` and that line on stderr. A single
  run exits 2; a job of a sweep returns NaN, so the launcher goes on with the other jobs, and
  `kdrun.sweep.callbacks.ReportCallback` lists it and exits 2 at the end.
- interrupted (SIGINT/SIGTERM): it stops after its current step, checkpoints `last.pt`,
  `status.json` says `interrupted` and how to resume, and the process exits 130/143.
A job's state is read back with `kdrun.run.rundir.run_state(run_dir)`; `kdrun <command>
resume=SWEEP_DIR` (kdrun.sweep.resume) reruns the jobs that did not finish.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun.core.console import in_sweep
from kdrun.core.errors import Interrupted, KdrunError, first_line
from kdrun.core.files import writes
from kdrun.core.jobenv import launched, usable_cpus
from kdrun.run.failure import fail
from kdrun.run.resume import resume_command
from kdrun.run.rundir import LAST, SUMMARY, owned, tidy_finished, write_resolved, write_status
from kdrun.run.signals import report_interrupted, stop_on_signals
from kdrun.run.tracking import tracking
from kdrun.run.validate import validate


def parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many jobs of this sweep run at once on this machine (joblib's n_jobs, else 1)."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs", -1))
    return usable_cpus()[0] if n_jobs < 0 else n_jobs


def stop_interrupted(cfg: DictConfig, run_dir: Path, interrupted: Interrupted, code: int) -> None:
    """Mark the run interrupted (never finished), say how to continue it, exit 130/143."""
    where = f"epoch {interrupted.epoch} after step {interrupted.step}"
    if interrupted.saved:
        resume = resume_command(cfg.command, run_dir, int(os.environ.get("WORLD_SIZE", "1")))
        write_status(run_dir, "interrupted", epoch=interrupted.epoch, step=interrupted.step, resume=resume)
        if writes():  # rank 0 speaks for a job of several
            report_interrupted(f"kdrun: interrupted in {where}, state saved to {run_dir / LAST}; resume with: {resume}")
    else:
        write_status(run_dir, "interrupted", epoch=interrupted.epoch, step=interrupted.step, resume=None)
        report_interrupted(f"kdrun: interrupted in {where} (teacher training, not resumable); run the command again")
    sys.exit(code)


def join_job() -> None:
    """In a torchrun/SLURM job of several processes: join it (only rank 0 then writes; kdrun.core.distributed)."""
    if launched():
        from kdrun.core.distributed import enter_job  # torch: only in a job of several

        enter_job()


def collective_failures() -> Any:
    """In a job of several, a failed collective (a rank died) becomes a KdrunError naming it; else nothing."""
    if not launched():
        return nullcontext()
    from kdrun.core.distributed import collective_failures as as_one_line

    return as_one_line()


def run_task(cfg: DictConfig) -> float | None:
    """Hydra's task function: one job, in its own run dir, held for its whole life."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:  # a job of a sweep (also in a joblib or SLURM worker): one line, the report is the table
        in_sweep()
    if cfg.threads == 0 and parallel_jobs(hydra_cfg) > 1:  # share the CPUs instead of oversubscribing them
        cfg.threads = max(1, usable_cpus()[0] // parallel_jobs(hydra_cfg))
    try:
        join_job()
        refuse_finished(cfg, run_dir)
        with owned(run_dir):
            if hydra_cfg.output_subdir is not None:
                write_resolved(run_dir / hydra_cfg.output_subdir, cfg)
            return run_owned(cfg, run_dir, multirun, Path(hydra_cfg.sweep.dir).resolve() if multirun else None)
    except KdrunError as error:  # the run dir is in use (not ours: write nothing into it), or the job's ranks never met
        return job_failed(fail(str(error)), multirun)


def refuse_finished(cfg: DictConfig, run_dir: Path) -> None:
    """The last guard of a finished run (the CLI checks every path it can resolve): a job whose directory
    already holds `summary.json` writes nothing more there."""
    if (run_dir / SUMMARY).exists() and not cfg.get("resume"):
        raise KdrunError(f"{run_dir} already holds a finished run; this job writes nothing there "
                         "(give each job its own directory)")


def run_owned(cfg: DictConfig, run_dir: Path, multirun: bool, sweep_dir: Path | None = None) -> float | None:
    """The command's run with the run dir held: it ends with `summary.json`, or `status.json` and one line.

    The stop handlers stay installed until a failure is recorded and said: torchrun sends SIGTERM to
    the other ranks as soon as one dies, and with the default handler back a rank would die silently
    between its failed collective and its one line."""
    with stop_on_signals() as stop:
        try:
            validate(cfg)
            with collective_failures():
                try:
                    with tracking(cfg, run_dir, sweep_dir):
                        result = importlib.import_module(f"kdrun.commands.{cfg.command}").run(cfg, run_dir)
                    tidy_finished(run_dir, cfg.keep_last)
                    return result
                except Interrupted as interrupted:
                    stop_interrupted(cfg, run_dir, interrupted, stop.exit_code)
                except SystemExit as exiting:  # sys.exit() in user code (a custom model's builder): not finished
                    raise KdrunError(f"user code called sys.exit({exiting.code}) before the run finished (a custom "
                                     "model or dataset?); remove that call") from None
        except Exception as error:  # noqa: BLE001 - every failure ends in status.json and one line
            if isinstance(error, BrokenPipeError) and (run_dir / SUMMARY).exists():
                return None  # finished; only its closing table found no reader (`| head`)
            message = failure_message(error) or unexpected(error, run_dir)
            return job_failed(fail(message, run_dir, getattr(error, "rerun_fixes", True)), multirun)
    return None


def unexpected(error: Exception, run_dir: Path) -> str:
    """The one line for a failure kdrun has no words for (a bug, an error in user code); its traceback goes to
    the run's log file, where a bug report can quote it."""
    logs = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in logs:
        handler.stream.write("".join(traceback.format_exception(error)))
        handler.flush()
    where = f"the traceback is in {logs[0].baseFilename}" if logs else "HYDRA_FULL_ERROR=1 shows the traceback"
    return f"{type(error).__name__}: {first_line(error)} (unexpected; {where})"


OUT_OF_MEMORY = ("out of memory", "can't allocate memory")  # CUDA's and the CPU allocator's words


def failure_message(error: Exception) -> str | None:
    """The one line for a failure the user can act on (bad value, full disk, out of memory); None for a bug."""
    if isinstance(error, KdrunError):
        return str(error)
    if isinstance(error, BrokenPipeError):
        return "the output was closed (stdout went to a program that exited, e.g. `| head`); redirect it to a file"
    if isinstance(error, OSError):  # a full disk, a read-only teacher store, ...: the path and the reason
        return (f"cannot write or read {error.filename or 'a file'} ({error.strerror or first_line(error)}); "
                "check free disk space and permissions, or choose another path")
    if "Expected more than 1 value per channel when training" in str(error):  # BatchNorm given one example
        return ("a batch of one example reached a BatchNorm layer in training, which needs two or more; "
                "raise optim.batch_size (per process, with torchrun) to 2 or more")
    if type(error).__name__ == "OutOfMemoryError" or any(s in str(error).lower() for s in OUT_OF_MEMORY):
        return (f"out of memory ({first_line(error)[:120]}); lower optim.batch_size or latency.batch_size, "
                "or pick a smaller model")
    return None


def job_failed(code: int, multirun: bool) -> float:
    """A single run exits with `code`. In a sweep the job returns NaN instead (Optuna records a failed trial),
    so the other jobs run; the sweep's end lists it and exits non-zero (kdrun.sweep.callbacks)."""
    if not multirun:
        sys.exit(code)
    return math.nan
