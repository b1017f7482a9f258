"""`hydra/launcher=stacked`: a multirun whose compatible jobs train together as one stacked model.

The launcher gets every job's config (`kdrun.sweep.jobconfigs`: the configs Hydra's sweeper composed
to validate the batch, most of them derived from one composition), asks
`kdrun.sweep.groups.plan` which jobs share a training loop, runs a job that shares it with no
other (or cannot be stacked; the log says why) as usual, and a group in three steps
(`kdrun.sweep.group`): each job opened in its own Hydra context (`.hydra/`, log file), the
group trained once, each job closed (checkpoint.pt, summary.json) and its return value set.
Every job keeps its own run directory and its own return value, so sweepers and the sweep
report see no difference.

With `resume=true` (set by `kdrun <command> resume=SWEEP_DIR`, kdrun.sweep.resume) it finishes a sweep
in its own dir: a finished job is left alone (its result read back), a job with `last.pt`
continues from it (grouped with the jobs stopped at the same epoch and step), any other
starts afresh after what a failed attempt left is cleared.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from kdrun.sweep.jobconfigs import JobConfigs

log = logging.getLogger(__name__)


def _output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir).resolve()


class StackedSweep:
    """The launcher's behaviour; Hydra's plugin class (hydra_plugins/kdrun_stacked_launcher) adds the Launcher base."""

    def __init__(self, max_group_size: int = 64, resume: bool = False) -> None:
        self.max_group_size, self.resume = max_group_size, resume
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        # Takes over the loader's load_sweep_config: the sweeper's validation composes (at most) once for both.
        self.job_configs = JobConfigs(hydra_context.config_loader, config)

    def _job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        config = self.job_configs.take(list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

    def _run(self, config: DictConfig, task: Callable[[DictConfig], Any]) -> JobReturn:
        return run_job(hydra_context=self.hydra_context, task_function=task, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from kdrun.sweep.groups import plan

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [self._job_config(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        results: list[Optional[JobReturn]] = [None] * len(configs)
        starts = self._resume(configs, job_overrides, results) if self.resume else [None] * len(configs)
        todo = [i for i, result in enumerate(results) if result is None]
        groups = plan([configs[i] for i in todo], self.max_group_size, [starts[i] for i in todo])
        stacked = sum(len(g.jobs) for g in groups if g.alone_because is None)
        log.info(f"Launching {len(todo)} jobs: {stacked} in {sum(g.alone_because is None for g in groups)} "
                 f"stacked group(s), {len(todo) - stacked} alone")
        for group in groups:
            jobs = [todo[i] for i in group.jobs]
            if group.alone_because is not None:
                [index] = jobs
                log.info(f"\t#{initial_job_idx + index} runs alone ({group.alone_because}): "
                         f"{' '.join(filter_overrides(job_overrides[index]))}")
                results[index] = self._run(configs[index], self.task_function)
                continue
            for index, result in zip(jobs, self._run_group([configs[i] for i in jobs])):
                results[index] = result
        return results

    def _resume(self, configs: list[DictConfig], job_overrides: Sequence[Sequence[str]],
                results: list[Optional[JobReturn]]) -> list[Any]:
        """Each job's start in a resumed sweep: its last.pt's [epoch, step], None for a fresh start. A job
        that finished (or cannot continue: one line says why) gets its result now and is not run."""
        from kdrun.core.errors import KdrunError
        from kdrun.run.failure import fail
        from kdrun.run.rundir import forget_unfinished
        from kdrun.sweep.resume import (
            CONTINUE,
            FAILS_AGAIN,
            FINISHED,
            continue_from_last,
            finished_result,
            job_dir_of,
            job_step,
        )

        starts: list[Any] = []
        for index, config in enumerate(configs):
            job_dir, start = job_dir_of(config), None
            step = job_step(job_dir)
            try:
                if step == FINISHED:
                    results[index] = _done(config, job_overrides[index], finished_result(job_dir))
                elif step == FAILS_AGAIN:
                    results[index] = _done(config, job_overrides[index], math.nan)
                elif step == CONTINUE:
                    continue_from_last(job_dir, config)
                    start = _start_of(job_dir)
                else:
                    forget_unfinished(job_dir)
            except KdrunError as error:
                fail(str(error))
                results[index] = _done(config, job_overrides[index], math.nan)
            starts.append(start)
        return starts

    def _run_group(self, configs: list[DictConfig]) -> list[JobReturn]:
        from kdrun.sweep import group

        opened = [self._run(config, lambda cfg: group.open_job(cfg, _output_dir())) for config in configs]
        jobs = [ret.return_value for ret in opened]
        shared = group.train_group(jobs)
        for ret, job in zip(opened, jobs):  # Hydra's per-job work (.hydra/, logging) was done at opening
            ret.return_value = group.close_job(job, shared)
        return opened


def _done(config: DictConfig, overrides: Sequence[str], value: float) -> JobReturn:
    """The return of a job not run now (it finished before, or could not continue: NaN, as a failed job's)."""
    return JobReturn(overrides=list(overrides), cfg=config, hydra_cfg=config, working_dir=str(Path.cwd()),
                     task_name=str(config.hydra.job.name), status=JobStatus.COMPLETED, _return_value=value)


def _start_of(job_dir: Path) -> Any:
    """Where a job continues: its last.pt's epoch and step; if unreadable, the error, a start no other job shares
    (it then runs alone, and fails with that line)."""
    from kdrun.core.errors import KdrunError
    from kdrun.run.rundir import LAST
    from kdrun.train.state import load_state

    try:
        state = load_state(job_dir / LAST)
    except KdrunError as error:
        return str(error)
    return [state["epoch"], state["step"]]
