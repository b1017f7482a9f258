"""`python -m kdrun.bench --sweep`: the README's 24-job MNIST-1D sweep, end to end, three ways.

`kdrun distill -m T=1,2,4,8 alpha=0.5,0.9 seed=0,1,2` as real CLI processes in one working
directory (its teacher trained and stored first, not timed), run serially (Hydra's basic
launcher), with the joblib launcher (`hydra/launcher=local_parallel`: 2 workers) and stacked
(`hydra/launcher=stacked`), one after the other in one run so all see the same machine. It
reports each one's wall time and its ratio to serial, and the sum of the serial jobs' own
training time (`train_seconds`): what the sweep would cost with no per-job overhead at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

from kdrun.core.console import console

GRID = ["T=1,2,4,8", "alpha=0.5,0.9", "seed=0,1,2"]
LAUNCHERS = {"serial": [], "joblib (2 workers)": ["hydra/launcher=local_parallel"],
             "stacked": ["hydra/launcher=stacked"]}


def timed_python(*args: str, cwd: Path) -> tuple[float, str]:
    """Run `python ARGS` in `cwd`; its wall time in seconds and its stdout (a failure stops the bench)."""
    started = time.perf_counter()
    run = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "160"})
    if run.returncode != 0:
        raise SystemExit(f"python {' '.join(args)[:200]} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return time.perf_counter() - started, run.stdout


def kdrun_wall(workdir: Path, *args: str) -> float:
    """Wall time of `kdrun ARGS` run in `workdir`."""
    return timed_python("-m", "kdrun", *args, cwd=workdir)[0]


def _train_seconds(sweep_dir: Path) -> list[float]:
    return [json.loads(p.read_text())["train_seconds"] for p in sorted(sweep_dir.glob("*/summary.json"))]


def run_sweep_bench(workdir: Path, epochs: int, extra: list[str]) -> dict:
    """Wall time of the sweep per launcher, and the serial jobs' summed training time."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    common = ["progress=false", f"epochs={epochs}", *extra]
    kdrun_wall(workdir, "train-teacher", "progress=false", *[e for e in extra if not e.startswith(("threads", "T="))])
    result = {"command": "kdrun distill -m " + " ".join(GRID + common), "epochs": epochs, "scenarios": {}}
    for label, launcher in LAUNCHERS.items():
        sweep_dir = workdir / "sweeps" / label.split()[0]
        wall = kdrun_wall(workdir, "distill", "-m", *GRID, *common, *launcher, f"hydra.sweep.dir={sweep_dir}")
        trained = _train_seconds(sweep_dir)
        result["scenarios"][label] = {"wall_seconds": wall, "jobs": len(trained), "train_seconds_sum": sum(trained)}
    result["load_average"] = os.getloadavg()
    return result


def show_sweep(result: dict) -> None:
    """Wall time per launcher beside the time its jobs spent training: the rest is per-job overhead."""
    scenarios = result["scenarios"]
    serial = scenarios["serial"]
    table = Table(title=f"24-job sweep: {result['command']}  (load average {result['load_average'][0]:.2f})")
    for column in ("launcher", "wall s", "speedup over serial", "jobs", "training s", "beyond training, s/job"):
        table.add_column(column, justify="left" if column == "launcher" else "right")
    for label, timing in scenarios.items():
        beyond = (timing["wall_seconds"] - timing["train_seconds_sum"]) / timing["jobs"]
        table.add_row(label, f"{timing['wall_seconds']:.1f}", f"{serial['wall_seconds'] / timing['wall_seconds']:.2f}x",
                      str(timing["jobs"]), f"{timing['train_seconds_sum']:.1f}", f"{beyond:.2f}")
    console.print(table)
    console.print("training s: the jobs' summed train_seconds (a stacked group's is its one loop's time); joblib's "
                  "two workers train side by side, so its sum can exceed its wall time")
