"""One module per command; `run_task` is the Hydra task function they all share.

A command module exposes `run(cfg, run_dir) -> float` (its final test accuracy, which a
sweeper such as Optuna maximises). Hydra calls `run_task` once per job (a single run or each
job of a sweep); a `KdrunError` becomes one line on stderr, a `status.json` saying the run
failed, and exit code 2. SIGINT/SIGTERM stop a run after its current step: it checkpoints,
`status.json` says `interrupted` and how to resume, and the exit code is 130/143.
"""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from kdrun.config import validate
from kdrun.errors import Interrupted, KdrunError
from kdrun.jobenv import launched
from kdrun.lifecycle import report_interrupted, resume_command, stop_on_signals


def parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many jobs of this sweep run at once on this machine (joblib's n_jobs, else 1)."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs", -1))
    return (os.cpu_count() or 1) if n_jobs < 0 else n_jobs


def stop_interrupted(cfg: DictConfig, run_dir: Path, interrupted: Interrupted, code: int) -> None:
    """Mark the run interrupted (never finished), say how to continue it, exit 130/143."""
    from kdrun.rundir import write_status, writes

    where = f"epoch {interrupted.epoch} after step {interrupted.step}"
    if interrupted.saved:
        resume = resume_command(cfg.command, run_dir)
        write_status(run_dir, "interrupted", epoch=interrupted.epoch, step=interrupted.step, resume=resume)
        if writes():  # rank 0 speaks for a job of several
            report_interrupted(f"kdrun: interrupted in {where}, state saved to {run_dir / 'last.pt'}; resume with: {resume}")
    else:
        write_status(run_dir, "interrupted", epoch=interrupted.epoch, step=interrupted.step, resume=None)
        report_interrupted(f"kdrun: interrupted in {where} (teacher training, not resumable); run the command again")
    sys.exit(code)


def job_process() -> Any:
    """This process's part in a torchrun/SLURM job of several (kdrun.distributed), else nothing to do."""
    if not launched():
        return nullcontext()
    from kdrun.distributed import job_process as joined  # torch: only in a job of several

    return joined()


def run_task(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    if cfg.threads == 0 and parallel_jobs(hydra_cfg) > 1:  # share the cores instead of oversubscribing them
        cfg.threads = max(1, (os.cpu_count() or 1) // parallel_jobs(hydra_cfg))
    try:
        validate(cfg)
        with stop_on_signals() as stop, job_process():
            try:
                return importlib.import_module(f"kdrun.commands.{cfg.command}").run(cfg, run_dir)
            except Interrupted as interrupted:
                stop_interrupted(cfg, run_dir, interrupted, stop.exit_code)
    except KdrunError as error:
        fail(run_dir, str(error))
    except OSError as error:  # a full disk, a read-only teacher store, ...: the path and the reason, no traceback
        fail(run_dir, f"cannot write or read {error.filename or 'a file'} ({error.strerror or error}); "
                      "check free disk space and permissions, or choose another path")


def fail(run_dir: Path, message: str) -> None:
    """One line on stderr, status.json `failed` (if it can still be written), exit 2.

    Called while handling the error: with HYDRA_FULL_ERROR=1 it re-raises it for the traceback.
    """
    from kdrun.rundir import write_failure

    try:
        write_failure(run_dir, message)
    except OSError:
        pass
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    print(f"kdrun: error: {message}", file=sys.stderr)
    sys.exit(2)
