"""Experiment trackers (`logger=`): TensorBoard, MLflow, Weights & Biases; one module each, imported lazily.

A run opens the trackers it was asked for once (kdrun.run.tracking), every recorded epoch goes to
all of them (`current().log_epoch`), and at its end each gets the summary and the run's files, or
the reason it failed. No torch and no tracker library is imported here: the CLI checks `logger=`
against `NAMES` before any job starts.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from kdrun.trackers.base import RunInfo, Tracker

log = logging.getLogger("kdrun")

# name -> "module:class"; each module imports its library only when a run opens it.
NAMES = {
    "tensorboard": "kdrun.trackers.tensorboard_tracker:TensorBoardTracker",
    "mlflow": "kdrun.trackers.mlflow_tracker:MlflowTracker",
    "wandb": "kdrun.trackers.wandb_tracker:WandbTracker",
}


def tracker_names(logger: Any) -> list[str]:
    """`logger=` as a list of names: `none` -> [], `mlflow` -> [mlflow], `[tensorboard,mlflow]` as given."""
    names = [logger] if isinstance(logger, str) else list(logger or [])
    return [str(name) for name in names if str(name) != "none"]


class Trackers:
    """The trackers of one run, called together; empty when the run logs nowhere but its run dir."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_epoch(self, label: str, row: dict[str, float]) -> None:
        self._each("log_epoch", label, row)

    def finish(self, summary: dict[str, Any], files: list[Any]) -> None:
        self._each("finish", summary, files)

    def fail(self, reason: str) -> None:
        self._each("fail", reason)

    def _each(self, call: str, *args: Any) -> None:
        """A tracker that breaks mid-run (its server gone, its disk full) is said once and dropped: the run
        and its run dir go on, they are the record."""
        for tracker in list(self.trackers):
            try:
                getattr(tracker, call)(*args)
            except Exception as error:  # noqa: BLE001 - any library's error; the run dir stays the truth
                self.trackers.remove(tracker)
                log.warning("%s stopped logging (%s: %s); the run dir holds everything", type(tracker).__name__,
                            type(error).__name__, str(error).splitlines()[0][:160] if str(error) else "")


_current = Trackers([])  # the trackers of the run this process is running (kdrun.run.tracking sets them)


def open_trackers(names: list[str], info: RunInfo) -> Trackers:
    """Open each named tracker for this run and make them the current ones."""
    global _current
    opened = []
    for name in names:
        module, cls = NAMES[name].split(":")
        opened.append(getattr(importlib.import_module(module), cls)(info))
    _current = Trackers(opened)
    return _current


def close_trackers() -> None:
    """The run is over: later epochs (none should come) go nowhere."""
    global _current
    _current = Trackers([])


def current() -> Trackers:
    """The trackers of the run in progress (none outside a run, or on ranks other than 0)."""
    return _current
