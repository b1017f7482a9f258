"""Hydra callbacks: after a sweep, summarise it (`kdrun report` on the sweep dir) and say which jobs failed.

Imported by Hydra at the start of every run, so the report's own imports wait until a
sweep has ended.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# Loggers whose INFO lines say nothing a person needs: the study Optuna creates, its sampler, its storage.
QUIET = ("optuna", "hydra_plugins.hydra_optuna_sweeper")


class ReportCallback(Callback):
    """Writes the report into the sweep dir and prints its table (a report problem is one line, never a
    traceback); then, if any job did not finish, names them and ends the sweep command with exit code 2."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Jobs show one line each (the report at the end is the table), third-party INFO lines stay off the
        console; a tuning sweeper maximises each run's return: say so when that is test accuracy (no val split)."""
        from kdrun.core.console import in_sweep

        in_sweep()
        for chatty in QUIET:
            logging.getLogger(chatty).setLevel(logging.WARNING)
        sweeper = str(config.hydra.sweeper.get("_target_", "")).lower()
        if "optuna" in sweeper and not config.get("dataset", {}).get("val_split"):
            print("kdrun: note: without a validation split this search maximises test accuracy, so its winner is "
                  "tuned on the test set; set dataset.val_split=0.1 to tune on held-out training data",
                  file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        if not sweep_dir.is_dir():  # a sweep with no jobs
            return
        unfinished = summarise_sweep(sweep_dir)
        track_report(config, sweep_dir, unfinished)
        if unfinished:
            sys.exit(end_of_incomplete_sweep(sweep_dir, config.command, unfinished))


def summarise_sweep(sweep_dir: Path) -> list[Path]:
    """Print the sweep's report (written into it) and return the job dirs that did not finish."""
    from kdrun.core.errors import KdrunError
    from kdrun.report import make_report, show_report
    from kdrun.report.runs import find_runs

    try:
        show_report(make_report([sweep_dir]))
    except KdrunError as error:
        print(f"kdrun: no report for this sweep: {error}")
    except Exception as error:  # noqa: BLE001 - the runs are on disk; say how to retry
        print(f"kdrun: report failed ({type(error).__name__}: {error}); retry with `kdrun report {sweep_dir}`")
    return find_runs([sweep_dir])[1]


def track_report(config: DictConfig, sweep_dir: Path, unfinished: list[Path]) -> None:
    """With `logger=mlflow`/`wandb`: the report's table and plots go to the sweep's group as its `report` run."""
    from kdrun.run.tracking import track_sweep_report
    from kdrun.trackers import tracker_names

    if "logger" not in config or not tracker_names(config.logger):
        return
    from kdrun.report.runs import find_runs

    finished = find_runs([sweep_dir])[0]
    try:
        track_sweep_report(config, sweep_dir, len(finished) + len(unfinished), len(unfinished))
    except Exception as error:  # noqa: BLE001 - the report is on disk already; say it and go on
        print(f"kdrun: the sweep's report was not logged ({type(error).__name__}: {error})")


def end_of_incomplete_sweep(sweep_dir: Path, command: str, unfinished: list[Path]) -> int:
    from kdrun.run.failure import fail
    from kdrun.run.resume import resume_command
    from kdrun.run.rundir import failed_for_good

    settled = [p.name for p in unfinished if failed_for_good(p)]
    rest = [p.name for p in unfinished if p.name not in settled]
    said = [f"{len(unfinished)} job(s) of this sweep did not finish (see the notes above)"]
    if settled:
        said.append(f"job {', '.join(settled)} failed for its settings and would fail again the same way: "
                    "change them in a new sweep")
    if rest:
        said.append(f"fix the cause of job {', '.join(rest)}, then run it with `{resume_command(command, sweep_dir)}`")
    return fail("; ".join(said))
