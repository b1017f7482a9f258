"""`hydra/launcher=stacked`: a multirun whose compatible jobs train together as one stacked model.

The launcher gets every job's config (`kdrun.jobconfigs`: the configs Hydra's sweeper composed
to validate the batch, most of them derived from one composition), asks
`kdrun.sweepgroups.plan` which jobs share a training loop, runs a job that shares it with no
other (or cannot be stacked; the log says why) as usual, and a group in three steps
(`kdrun.commands.group`): each job opened in its own Hydra context (`.hydra/`, log file), the
group trained once, each job closed (checkpoint.pt, summary.json) and its return value set.
Every job keeps its own run directory and its own return value, so sweepers and the sweep
report see no difference.
"""

# No `from __future__ import annotations`: Hydra execs this module outside sys.modules, where dataclass needs real types.

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from kdrun.jobconfigs import JobConfigs

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.kdrun_stacked_launcher.stacked_launcher.StackedLauncher"
    # Most jobs in one stacked model (memory grows with it; on CPU beyond ~32 there is little to gain).
    max_group_size: int = 64


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="kdrun")


def _output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir).resolve()


class StackedLauncher(Launcher):
    def __init__(self, max_group_size: int = 64) -> None:
        super().__init__()
        self.max_group_size = max_group_size
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
        from kdrun.sweepgroups import plan

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [self._job_config(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        groups = plan(configs, self.max_group_size)
        stacked = sum(len(g.jobs) for g in groups if g.alone_because is None)
        log.info(f"Launching {len(configs)} jobs: {stacked} in {sum(g.alone_because is None for g in groups)} "
                 f"stacked group(s), {len(configs) - stacked} alone")
        results: list[Optional[JobReturn]] = [None] * len(configs)
        for group in groups:
            if group.alone_because is not None:
                [index] = group.jobs
                log.info(f"\t#{initial_job_idx + index} runs alone ({group.alone_because}): "
                         f"{' '.join(filter_overrides(job_overrides[index]))}")
                results[index] = self._run(configs[index], self.task_function)
                continue
            for index, result in zip(group.jobs, self._run_group([configs[i] for i in group.jobs])):
                results[index] = result
        return results

    def _run_group(self, configs: list[DictConfig]) -> list[JobReturn]:
        from kdrun.commands import group

        opened = [self._run(config, lambda cfg: group.open_job(cfg, _output_dir())) for config in configs]
        jobs = [ret.return_value for ret in opened]
        shared = group.train_group(jobs)
        for ret, job in zip(opened, jobs):  # Hydra's per-job work (.hydra/, logging) was done at opening
            ret.return_value = group.close_job(job, shared)
        return opened
