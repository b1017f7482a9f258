"""One module per command; `run_task` is the Hydra task function they all share.

A command module exposes `run(cfg, run_dir) -> float` (its final test accuracy, which a
sweeper such as Optuna maximises). Hydra calls `run_task` once per job (a single run or each
job of a sweep); a `KdrunError` becomes one line on stderr, a `status.json` saying the run
failed, and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from kdrun.config import validate
from kdrun.errors import KdrunError


def parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many jobs of this sweep run at once on this machine (joblib's n_jobs, else 1)."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs", -1))
    return (os.cpu_count() or 1) if n_jobs < 0 else n_jobs


def run_task(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    if cfg.threads == 0 and parallel_jobs(hydra_cfg) > 1:  # share the cores instead of oversubscribing them
        cfg.threads = max(1, (os.cpu_count() or 1) // parallel_jobs(hydra_cfg))
    try:
        validate(cfg)
        return importlib.import_module(f"kdrun.commands.{cfg.command}").run(cfg, run_dir)
    except KdrunError as error:
        from kdrun.runio import write_failure

        write_failure(run_dir, str(error))
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"kdrun: error: {error}", file=sys.stderr)
        sys.exit(2)
