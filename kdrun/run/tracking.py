"""A run's trackers (`logger=`, kdrun.trackers): opened as the run starts, given its summary.json and plots when
it finishes, or its failure when it does not. A sweep's jobs share one group (W&B) / experiment (MLflow)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from kdrun.core.errors import first_line
from kdrun.core.files import writes
from kdrun.run.rundir import SUMMARY
from kdrun.trackers import RunInfo, close_trackers, open_trackers, tracker_names


def sweep_name(sweep_dir: Path) -> str:
    """`distill-sweep/2026-12-04_17-00-00_000000`: the group (W&B) and experiment (MLflow) of a sweep's runs."""
    return f"{sweep_dir.parent.name}/{sweep_dir.name}"


def run_config(cfg: DictConfig) -> dict:
    """The run's own keys, resolved (a sweep's config also holds Hydra's, some unresolvable outside a job)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def run_info(cfg: DictConfig, run_dir: Path, sweep_dir: Optional[Path], name: Optional[str] = None) -> RunInfo:
    """The run as trackers name it: `distill 2026-12-04_17-00-00_000000`, or `<sweep>/<job>` in the sweep's group."""
    sweep = sweep_name(sweep_dir) if sweep_dir else None
    tracker = cfg.tracker
    return RunInfo(name=f"{sweep}/{name or run_dir.name}" if sweep else f"{cfg.command} {run_dir.name}",
                   project=tracker.project, group=tracker.group or sweep,
                   config=run_config(cfg), run_dir=run_dir,
                   store=Path(tracker.dir).expanduser().resolve(), mlflow_uri=tracker.mlflow_uri,
                   wandb_mode=tracker.wandb_mode)


def run_files(run_dir: Path) -> list[Path]:
    """What a tracker keeps of a finished run: summary.json and its plots."""
    return [run_dir / SUMMARY, *sorted(run_dir.glob("*.png"))]


@contextmanager
def tracking(cfg: DictConfig, run_dir: Path, sweep_dir: Optional[Path]) -> Iterator[None]:
    """Log this run to the trackers `logger=` names (rank 0 only) for as long as the block runs."""
    names = tracker_names(cfg.logger)
    if not names or not writes():
        yield
        return
    trackers = open_trackers(names, run_info(cfg, run_dir, sweep_dir))
    try:
        yield
    except BaseException as error:
        trackers.fail(first_line(error) or type(error).__name__)
        raise
    else:
        if (run_dir / SUMMARY).exists():
            trackers.finish(json.loads((run_dir / SUMMARY).read_text()), run_files(run_dir))
        else:
            trackers.fail("the run ended without summary.json")
    finally:
        close_trackers()


REPORT_FILES = ("report.csv", "report.md", "*.png")


def track_sweep_report(cfg: DictConfig, sweep_dir: Path, jobs: int, unfinished: int) -> None:
    """The sweep's report (its table as CSV and Markdown, its plots) as one more run of the sweep's group,
    `<sweep>/report`, in the trackers that keep files (MLflow, W&B; TensorBoard has per-run events only)."""
    names = [name for name in tracker_names(cfg.logger) if name != "tensorboard"]
    if not names:
        return
    files = sorted(path for pattern in REPORT_FILES for path in sweep_dir.glob(pattern))
    info = run_info(cfg, sweep_dir, sweep_dir, name="report")
    # Not one job's config: the sweep's own overrides (`T=1,2,4`), which its jobs' values came from.
    overrides = OmegaConf.select(cfg, "hydra.overrides.task", default=[])
    info.config = {"command": cfg.command, "sweep_dir": str(sweep_dir), "overrides": list(overrides or [])}
    trackers = open_trackers(names, info)
    try:
        trackers.finish({"jobs": jobs, "unfinished": unfinished}, files)
    finally:
        close_trackers()
