"""What every tracker gets and does: the run it logs, and the three calls a run makes to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from kdrun.core.errors import KdrunError


@dataclass
class RunInfo:
    """One run as trackers name it: `project` (MLflow experiment, W&B project), `group` (the sweep it belongs
    to, or None), `name`, the resolved config, and `store` (the folder local stores live in)."""

    name: str
    project: str
    group: Optional[str]
    config: dict[str, Any]
    run_dir: Path
    store: Path
    mlflow_uri: Optional[str] = None
    wandb_mode: str = "offline"


class Tracker(Protocol):
    """A tracker opened for one run: epochs as they come, then the summary and files, or the failure."""

    def log_epoch(self, label: str, row: dict[str, float]) -> None: ...

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None: ...

    def fail(self, reason: str) -> None: ...


def missing_extra(logger: str, package: str) -> KdrunError:
    """The one line for a tracker whose library is not installed."""
    return KdrunError(f"logger={logger} needs the {package} package: pip install 'kdrun[{logger}]'")


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (`latency.batch1_ms_median`), lists and scalars kept."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def numbers(tree: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a summary, flattened (booleans and text left out): what a tracker plots."""
    return {k: float(v) for k, v in flat(tree).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
