"""Finding and loading finished runs: their summaries, overrides and configs, and the rows a report is made of.

How runs become rows (swept keys, seeds, the baseline gain) is kdrun.report.rows.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdrun.core.errors import KdrunError
from kdrun.run.rundir import HYDRA, METRICS, STATUS, SUMMARY, run_state, saved_config, saved_overrides

ROLES = {"train_teacher": "teacher", "train_student": "baseline", "distill": "distill"}
NOT_TRAINING = ("inspect_teacher", "evaluate")  # finished runs that train nothing: never rows of a report
FIXED = ("role", "model", "dataset")  # columns of every row; they also separate rows, so never a swept column
# "at best val": the epoch picked on the validation split (dataset.val_split), the honest number;
# "best (test-picked)": the max over epochs of test accuracy, as published tables report it.
HEADERS = ("final acc %", "top-5 %", "acc at best val %", "best acc % (test-picked)", "gain (pp)", "teacher acc %", "batch-1 ms",
           "speedup [95% interval]", "ORT ms fp32/int8", "INT8 acc %", "deployed speedup")
# Where a run's `deploy` block (export=true, kdrun export) keeps the student's ONNX Runtime numbers.
DEPLOYED = ("deploy", "models")


@dataclass
class Run:
    """One finished job: its summary, and its overrides and config where Hydra wrote them."""

    dir: Path
    summary: dict[str, Any]
    overrides: dict[str, str] | None
    config: DictConfig | None


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample std (n - 1); None for a single run
    n: int


@dataclass
class Row:
    """Runs that differ only in their seed."""

    command: str
    setting: dict[str, str]
    runs: list[Run]
    gain: float | None = None

    def values(self, *path: str) -> list[Any]:
        found = []
        for run in self.runs:
            value: Any = run.summary
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            found.append(value)
        return [v for v in found if v is not None]

    def field(self, name: str) -> Any:
        return self.runs[0].summary.get(name)

    @property
    def role(self) -> str:
        """A distill run on hard labels alone (`loss=ce`, or `alpha=0` with a loss that alpha weights: all but
        dkd) is the baseline inside a distill sweep."""
        hard_labels_only = self.field("loss") == "ce" or (self.field("alpha") == 0 and self.field("loss") != "dkd")
        if self.command == "distill" and hard_labels_only:
            return "baseline"
        return ROLES.get(self.command, self.command)

    def stat(self, metric: str) -> Stat:
        values = self.values(metric)
        return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def maybe_stat(self, metric: str) -> Stat | None:
        """`stat` where every run has the metric (runs without a validation split have no val numbers)."""
        return self.stat(metric) if len(self.values(metric)) == len(self.runs) else None

    def median(self, *path: str) -> float | None:
        values = self.values(*path)
        return statistics.median(values) if values else None

    def mean(self, *path: str) -> float | None:
        values = self.values(*path)
        return statistics.fmean(values) if values else None

    def contended(self) -> bool:
        """Whether any run's latency was measured on a busy or noisy machine (its speedup is not comparable)."""
        return any(self.values("latency", "contended"))

    def speedup_interval(self) -> tuple[float, float] | None:
        """The medians of the runs' 95% interval bounds of the batch-1 speedup (runs that recorded one)."""
        bounds = [b for b in self.values("speedup_interval") if isinstance(b, list) and len(b) == 2]
        if not bounds:
            return None
        return statistics.median(b[0] for b in bounds), statistics.median(b[1] for b in bounds)

    def label(self) -> str:
        return " ".join([self.role, str(self.field("model")), *(f"{k}={v}" for k, v in self.setting.items())])


@dataclass
class Report:
    keys: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


# --- finding and loading runs -------------------------------------------------------------

def find_runs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Finished run dirs (with summary.json) under `paths`, and the run dirs that did not finish."""
    finished, unfinished = set(), set()
    for path in paths:
        if not path.exists():
            raise KdrunError(f"no such file or directory: {path}; pass run or sweep directories, "
                             "e.g. kdrun report outputs/distill-sweep/<time>")
        if path.is_file():
            path = path.parent
        finished |= {p.parent.resolve() for p in path.rglob(SUMMARY)}
        # status.json alone: a job that never started (a SLURM job cancelled while pending, kdrun.sweep.slurm)
        unfinished |= {p.parent.resolve() for marker in (HYDRA, METRICS, STATUS) for p in path.rglob(marker)}
    return sorted(finished), sorted(unfinished - finished)


def load_run(run_dir: Path) -> Run:
    """A finished run, or a KdrunError saying why it cannot be averaged (the report skips it and says so)."""
    if not (run_dir / SUMMARY).is_file():  # a FIFO or a device would block the read for ever
        raise KdrunError(f"{SUMMARY} is not a regular file")
    try:
        summary = json.loads((run_dir / SUMMARY).read_bytes().decode())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise KdrunError(f"{SUMMARY} unreadable or not JSON ({str(error)[:80]})") from None
    if not isinstance(summary, dict):
        raise KdrunError(f"{SUMMARY} is not a JSON object")
    missing = [k for k in ("command", "model", "dataset", "test_acc", "best_test_acc", "latency") if k not in summary]
    if missing:
        raise KdrunError(f"{SUMMARY} lacks {', '.join(missing)}; not written by kdrun")
    if not all(isinstance(summary[k], str) for k in ("command", "model", "dataset")):
        raise KdrunError(f"{SUMMARY}'s command, model and dataset are not all text")
    for key in ("test_acc", "best_test_acc"):
        if not (isinstance(summary[key], (int, float)) and math.isfinite(summary[key])):
            raise KdrunError(f"{key} is {summary[key]}, not a number")
    hydra = run_dir / HYDRA
    try:
        overrides = read_overrides(hydra / "overrides.yaml") if (hydra / "overrides.yaml").is_file() else None
        config = OmegaConf.load(saved_config(run_dir)) if saved_config(run_dir).is_file() else None
    except Exception as error:  # noqa: BLE001 - YAML, encoding and permission errors alike
        raise KdrunError(f"{HYDRA}/ unreadable ({type(error).__name__}: {str(error).splitlines()[0][:80]})") from None
    if config is not None and not isinstance(config, DictConfig):
        raise KdrunError(f"{HYDRA}/config.yaml is not a mapping")
    return Run(run_dir, summary, overrides, config)


def load_runs(run_dirs: list[Path]) -> tuple[list[Run], list[str]]:
    """The runs that load, and a note per damaged one: a report never fails on one bad run."""
    runs, skipped = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except KdrunError as error:
            skipped.append(f"skipped {run_dir}: {error}")
    return runs, skipped


def unfinished_notes(run_dirs: list[Path], roots: list[Path]) -> list[str]:
    """One line per run that did not finish, named by its job number (its path under the sweep dir)."""

    def name(run_dir: Path) -> str:
        for root in roots:
            if run_dir.is_relative_to(root) and run_dir != root:
                return str(run_dir.relative_to(root))
        return str(run_dir)

    notes = []
    for run_dir in run_dirs:
        state, detail = run_state(run_dir)
        notes.append(f"job {name(run_dir)} {state}" + (f": {detail}" if detail else ""))
    return notes


def read_overrides(path: Path) -> dict[str, str]:
    """`key=value` lines of a job's task overrides, without Hydra's own and the +/++/~ prefixes."""
    overrides = {}
    for line in saved_overrides(path):
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if not key.startswith(("hydra.", "hydra/")):
            overrides[key] = value
    return overrides
