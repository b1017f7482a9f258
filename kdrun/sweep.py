"""`kdrun <command> resume=SWEEP_DIR`: finish a sweep whose jobs failed or were cut short.

The sweep's own `multirun.yaml` gives its overrides, which Hydra's basic sweeper expands into
the same jobs in the same order (job N in `SWEEP_DIR/N`). Each job is then, one after the
other: left alone if it has `summary.json`; continued from its `last.pt` (`kdrun <command>
resume=SWEEP_DIR/N`, which checks its config still composes the same); else run afresh in its
own directory with its own overrides, after clearing what a failed attempt left there. At
the end the sweep's report is rewritten and the exit code says whether every job finished.
No torch here: each job runs in a child `kdrun`, so a crash in one cannot take the others down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from kdrun.errors import KdrunError
from kdrun.resume import launch_dir
from kdrun.rundir import LAST, MULTIRUN, SUMMARY, check_not_in_use, forget_unfinished


def is_sweep_dir(path: Path) -> bool:
    return (path / MULTIRUN).is_file()


def sweep_jobs(sweep_dir: Path, config_name: str) -> list[tuple[Path, list[str]]]:
    """Each job's directory and overrides, in the order the sweep ran them; a one-line error if it cannot be known."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = OmegaConf.to_container(OmegaConf.load(sweep_dir / MULTIRUN), resolve=False)
    hydra = saved.get("hydra", {}) if isinstance(saved, dict) else {}
    if saved.get("command") != config_name:
        raise KdrunError(f"{sweep_dir} is a '{saved.get('command')}' sweep, not '{config_name}'; "
                         f"resume it with its own command")
    sweeper = hydra.get("sweeper", {})
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        raise KdrunError(f"{sweep_dir} was swept by {sweeper.get('_target_')}; only grid sweeps (the basic sweeper) "
                         "can be resumed, start it again")
    if hydra.get("sweep", {}).get("subdir") != "${hydra.job.num}":
        raise KdrunError(f"{sweep_dir} names its jobs by hydra.sweep.subdir={hydra['sweep'].get('subdir')}, "
                         "not by job number; it cannot be resumed")
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *hydra["overrides"]["task"]])
    jobs = BasicSweeper.split_arguments(overrides, None)[0]
    return [(sweep_dir / str(number), job) for number, job in enumerate(jobs)]


def job_command(name: str, job_dir: Path, overrides: list[str]) -> list[str] | None:
    """The kdrun command line that completes this job; None if it finished."""
    if (job_dir / SUMMARY).exists():
        return None
    if (job_dir / LAST).is_file():
        return [name, f"resume={job_dir}"]
    forget_unfinished(job_dir)
    return [name, *overrides, f"hydra.run.dir={job_dir}"]


def run_child(argv: list[str], cwd: Path) -> int:
    """`kdrun ARGV` in `cwd`; a Ctrl-C reaches the child too, which checkpoints and exits: wait for it."""
    child = subprocess.Popen([sys.executable, "-m", "kdrun", *argv], cwd=cwd)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def resume_sweep(name: str, config_name: str, sweep_dir: Path) -> int:
    """Run the sweep's unfinished jobs one by one, then rewrite its report; 0 only if every job finished."""
    from kdrun.callbacks import end_of_incomplete_sweep, summarise_sweep

    jobs = sweep_jobs(sweep_dir, config_name)
    for job_dir, _ in jobs:
        check_not_in_use(job_dir)
    todo = [(job_dir, job_command(name, job_dir, overrides)) for job_dir, overrides in jobs]
    todo = [(job_dir, argv) for job_dir, argv in todo if argv is not None]
    print(f"kdrun: {sweep_dir}: {len(jobs) - len(todo)} of {len(jobs)} job(s) finished; "
          f"running {', '.join(d.name for d, _ in todo) or 'none'}", flush=True)
    for job_dir, argv in todo:
        print(f"kdrun: job {job_dir.name}: kdrun {' '.join(argv)}", flush=True)
        code = run_child(argv, launch_dir(sweep_dir / MULTIRUN))
        if code in (130, 143):  # stopped by the user: the rest can wait for the next resume
            return code
    unfinished = summarise_sweep(sweep_dir)
    return end_of_incomplete_sweep(sweep_dir, config_name, unfinished) if unfinished else 0


