"""One module per command; `run_task` is the Hydra task function they all share.

A command module exposes `run(cfg, run_dir)`. Hydra calls `run_task` once per job (a
single run or each job of a sweep); a `KdrunError` becomes one line on stderr, a
`status.json` saying the run failed, and exit code 2.
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


def run_task(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    try:
        validate(cfg)
        importlib.import_module(f"kdrun.commands.{cfg.command}").run(cfg, run_dir)
    except KdrunError as error:
        from kdrun.runio import write_failure

        write_failure(run_dir, str(error))
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"kdrun: error: {error}", file=sys.stderr)
        sys.exit(2)
