"""`kdrun <command> resume=SWEEP_DIR`: finish a sweep whose jobs failed or were cut short.

The sweep's own `multirun.yaml` gives its overrides, which Hydra's basic sweeper expands into
the same jobs in the same order (job N in `SWEEP_DIR/N`). Each job is then, one after the
other: left alone if it has `summary.json`; continued from its `last.pt` (`kdrun <command>
resume=SWEEP_DIR/N`, which checks its config still composes the same); else run afresh in its
own directory with its own overrides, after clearing what a failed attempt left there. At
the end the sweep's report is rewritten and the exit code says whether every job finished.
No torch here: each job runs in a child `kdrun`, so a crash in one cannot take the others down.

A sweep run with `hydra/launcher=stacked` or `hydra/launcher=slurm` is run again through that launcher
instead, as one multirun in the same sweep dir with its own launcher settings (`launcher_resume_overrides`;
settings given on the resume's command line override them): the launcher makes the same per-job choice
(`job_step`), so a stacked sweep's unfinished jobs train as stacked groups again, and a SLURM sweep's are
submitted to SLURM again.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdrun.core.errors import KdrunError
from kdrun.run.outdir import SWEEP_JOB
from kdrun.run.replay import Consent, check_replayable
from kdrun.run.resume import check_same_config, launch_dir
from kdrun.run.rundir import (
    HYDRA,
    LAST,
    MULTIRUN,
    SUMMARY,
    check_not_in_use,
    failed_for_good,
    forget_unfinished,
    objective,
    saved_config,
)

# The class names of the launchers that resume a sweep themselves (hydra/launcher=stacked, hydra/launcher=slurm).
RESUMING_LAUNCHERS = ("StackedLauncher", "KdrunSlurmLauncher")
# What finishing a job of a sweep takes; FAILS_AGAIN: it failed for its own settings (a diverging loss), and
# running it again the same way would too, so a resume leaves it (and says so) instead of looping on it.
FINISHED, CONTINUE, RESTART, FAILS_AGAIN = "finished", "continue", "restart", "fails again"
# Hydra settings a resumed sweep sets itself, whatever its multirun.yaml says: the sweep dir (the one being
# resumed), multirun mode, the launcher's resume flag. kdrun's CLI recorded the first two when it started.
OWN_SETTINGS = ("hydra.sweep.dir", "hydra.mode", "hydra.launcher.resume")


def own_settings(hydra_overrides: list[str]) -> list[str]:
    """A sweep's saved Hydra overrides without those its resume sets itself (with or without a +/++ prefix)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(hydra_overrides)
    return [o.input_line for o in parsed if o.key_or_group not in OWN_SETTINGS]


def is_sweep_dir(path: Path) -> bool:
    return (path / MULTIRUN).is_file()


def saved_sweep(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's multirun.yaml as plain data (a file that is no YAML mapping is one line)."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(sweep_dir / MULTIRUN), resolve=False)
    except Exception as error:  # noqa: BLE001 - not text, not YAML, unreadable
        raise KdrunError(f"{sweep_dir / MULTIRUN} cannot be read ({type(error).__name__})") from None
    return saved if isinstance(saved, dict) else {}


def check_shape(sweep_dir: Path, hydra: Any) -> None:
    """multirun.yaml holds what Hydra writes there: a damaged or edited one is one line, not a KeyError."""
    shaped = (isinstance(hydra, dict) and isinstance(hydra.get("sweeper"), dict) and isinstance(hydra.get("sweep"), dict)
              and isinstance(hydra.get("overrides"), dict)
              and all(isinstance(hydra["overrides"].get(k), list) for k in ("task", "hydra")))
    if not shaped:
        raise KdrunError(f"{sweep_dir / MULTIRUN} lacks the sweep's settings (hydra.sweeper, hydra.sweep, "
                         "hydra.overrides); it was damaged or edited, so the sweep cannot be resumed")


def resumed_by_its_launcher(sweep_dir: Path) -> bool:
    """Whether the sweep ran with a launcher that resumes it (stacked: its groups resume as groups; slurm: its jobs
    go back to SLURM)."""
    target = OmegaConf.select(OmegaConf.create(saved_sweep(sweep_dir)), "hydra.launcher._target_", default="")
    return str(target).endswith(RESUMING_LAUNCHERS)


def job_step(job_dir: Path) -> str:
    """FINISHED (it has summary.json: left alone), FAILS_AGAIN (left alone too), CONTINUE (from its last.pt), or
    RESTART (afresh)."""
    if (job_dir / SUMMARY).exists():
        return FINISHED
    if failed_for_good(job_dir):
        return FAILS_AGAIN
    return CONTINUE if (job_dir / LAST).is_file() else RESTART


def sweep_jobs(sweep_dir: Path, config_name: str, consent: Consent) -> list[tuple[Path, list[str]]]:
    """Each job's directory and overrides, in the order the sweep ran them; a one-line error if it cannot be known."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = saved_sweep(sweep_dir)
    hydra = saved.get("hydra", {})
    if saved.get("command") != config_name:
        raise KdrunError(f"{sweep_dir} is a '{saved.get('command')}' sweep, not '{config_name}'; "
                         f"resume it with its own command")
    check_shape(sweep_dir, hydra)
    sweeper = hydra.get("sweeper", {})
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        raise KdrunError(f"{sweep_dir} was swept by {sweeper.get('_target_')}; only grid sweeps (the basic sweeper) "
                         "can be resumed, start it again")
    if hydra.get("sweep", {}).get("subdir") != "${hydra.job.num}":
        raise KdrunError(f"{sweep_dir} names its jobs by hydra.sweep.subdir={hydra['sweep'].get('subdir')}, "
                         "not by job number; it cannot be resumed")
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    check_replayable(sweep_dir, [*params, *hydra["overrides"]["task"], *own_settings(hydra["overrides"]["hydra"])],
                     consent)
    overrides = OverridesParser.create().parse_overrides([*params, *hydra["overrides"]["task"]])
    jobs = BasicSweeper.split_arguments(overrides, None)[0]
    return [(sweep_dir / str(number), job) for number, job in enumerate(jobs)]


def job_command(name: str, job_dir: Path, overrides: list[str], consent: Consent) -> list[str] | None:
    """The kdrun command line that completes this job (with the user's consent to the code it names); None if
    it finished."""
    step = job_step(job_dir)
    if step in (FINISHED, FAILS_AGAIN):
        return None
    if step == CONTINUE:
        return [name, f"resume={job_dir}", *consent.args]
    forget_unfinished(job_dir)
    return [name, *overrides, f"hydra.run.dir={job_dir}"]


def run_child(argv: list[str], cwd: Path, job_dir: Path) -> int:
    """`kdrun ARGV` in `cwd`, and wait for it. A SIGTERM or SIGINT sent to this process is passed on, once, to
    the child (in a session of its own, so a terminal's Ctrl-C does not reach it twice), which checkpoints and
    exits: no child trains on alone."""
    child = subprocess.Popen([sys.executable, "-m", "kdrun", *argv], cwd=cwd, start_new_session=True,
                             env={**os.environ, SWEEP_JOB: str(job_dir)})  # the one run dir allowed in a sweep dir
    forward = {signum: signal.signal(signum, lambda number, frame: child.send_signal(number))
               for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for signum, handler in forward.items():
            signal.signal(signum, handler)


def checked_jobs(sweep_dir: Path, config_name: str, consent: Consent) -> list[tuple[Path, list[str]]]:
    """The sweep's jobs, none of them in use by another process; says which ones will run."""
    jobs = sweep_jobs(sweep_dir, config_name, consent)
    for job_dir, _ in jobs:
        check_not_in_use(job_dir)
    steps = {job_dir.name: job_step(job_dir) for job_dir, _ in jobs}
    todo = [name for name, step in steps.items() if step in (CONTINUE, RESTART)]
    settled = [name for name, step in steps.items() if step == FAILS_AGAIN]
    print(f"kdrun: {sweep_dir}: {list(steps.values()).count(FINISHED)} of {len(jobs)} job(s) finished; "
          f"running {', '.join(todo) or 'none'}"
          + (f"; not rerunning {', '.join(settled)} (failed for their settings: the same run fails the same way)"
             if settled else ""), flush=True)
    return jobs


def launcher_resume_overrides(config_name: str, sweep_dir: Path, consent: Consent, extra: list[str]) -> list[str]:
    """The command line that runs a sweep again in its own dir, its launcher in resume mode: finished jobs left
    alone, the others continued or restarted (in stacked groups, or on SLURM, as before). `extra`: the launcher
    settings given with the resume (`hydra.launcher.KEY=VALUE`), which override the sweep's."""
    checked_jobs(sweep_dir, config_name, consent)
    overrides = saved_sweep(sweep_dir)["hydra"]["overrides"]
    return ["-m", *overrides["task"], *own_settings(overrides["hydra"]), *extra, f"hydra.sweep.dir={sweep_dir}",
            "hydra.launcher.resume=true"]


def resume_sweep(name: str, config_name: str, sweep_dir: Path, consent: Consent) -> int:
    """Run the sweep's unfinished jobs one by one, then rewrite its report; 0 only if every job finished."""
    from kdrun.sweep.callbacks import end_of_incomplete_sweep, summarise_sweep

    jobs = checked_jobs(sweep_dir, config_name, consent)
    todo = [(job_dir, job_command(name, job_dir, overrides, consent)) for job_dir, overrides in jobs]
    todo = [(job_dir, argv) for job_dir, argv in todo if argv is not None]
    for job_dir, argv in todo:
        print(f"kdrun: job {job_dir.name}: kdrun {' '.join(argv)}", flush=True)
        code = run_child(argv, launch_dir(sweep_dir / MULTIRUN), job_dir)
        if code in (130, 143):  # stopped by the user: the rest can wait for the next resume
            return code
    unfinished = summarise_sweep(sweep_dir)
    return end_of_incomplete_sweep(sweep_dir, config_name, unfinished) if unfinished else 0


# In the stacked launcher's resume mode (hydra.launcher.resume=true), for each job of the sweep:

def job_dir_of(config: DictConfig) -> Path:
    """Where a job of a sweep runs (the sweep dir and its subdir, as Hydra's launchers compose them)."""
    return Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)).resolve()


def finished_result(job_dir: Path) -> float:
    """A finished job's return value, as its task returned it (kdrun.run.rundir.objective)."""
    return objective(json.loads((job_dir / SUMMARY).read_text()))


def continue_from_last(job_dir: Path, config: DictConfig) -> None:
    """Make a job's composed config continue from its `last.pt`, as `resume=JOB_DIR` does (the override
    recorded in its .hydra/ too); a one-line error if the config files changed since it ran."""
    saved = OmegaConf.to_container(OmegaConf.load(saved_config(job_dir)), resolve=True)
    now = OmegaConf.to_container(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), resolve=True)
    check_same_config(job_dir, saved, now)
    with open_dict(config):
        config.resume = str(job_dir)
        config.hydra.overrides.task.append(f"resume={job_dir}")
