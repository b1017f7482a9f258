"""Hydra callbacks: after a sweep, summarise it (`kdrun report` on the sweep dir).

Imported by Hydra at the start of every run, so the report's own imports wait until a
sweep has ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReportCallback(Callback):
    """Writes the report into the sweep dir and prints its table; a report problem never fails the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from kdrun.errors import KdrunError
        from kdrun.report import make_report, show_report

        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        try:
            show_report(make_report([sweep_dir]))
        except KdrunError as error:
            print(f"kdrun: no report for this sweep: {error}")
        except Exception as error:  # the runs are on disk; the sweep itself succeeded
            print(f"kdrun: report failed ({type(error).__name__}: {error}); retry with `kdrun report {sweep_dir}`")
