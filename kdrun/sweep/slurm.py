"""`hydra/launcher=slurm`: Hydra's submitit launcher, and what a real cluster adds to it.

On the submitting machine (`launch`): resources are fitted to the partition and an impossible request refused before
anything is submitted (kdrun.sweep.partition); an sbatch rejection is one line and leaves no sweep dir; the sweep
waits for every job, saying what pending jobs wait for, and ends a wait that can never end; a job that SLURM
ended (cancelled, timed out, node failure, out of memory) is a failed run, its reason in its `status.json`, so the
sweep's report lists it and the command exits non-zero in one line; Ctrl-C cancels the sweep's jobs.

In each job (`__call__`, on a node): submitit's checkpoint signal (`signal_delay_s` before the time limit, or
a preemption) stops training after the current step with `last.pt` saved, and submitit's own handler then
requeues the job (`max_num_timeout` times at most). A job that starts again (requeued by submitit, by
`scontrol requeue`, or by `kdrun <command> resume=SWEEP_DIR`) continues from its `last.pt`, as
`resume=JOB_DIR` does (its metrics then have each epoch once), or starts afresh if it has none.
"""

from __future__ import annotations

import io
import math
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from kdrun.core.errors import KdrunError
from kdrun.run.failure import fail
from kdrun.run.rundir import LAST, write_failure
from kdrun.sweep.partition import fit_resources, read_partition

# Pending reasons that no amount of waiting resolves (an administrator or a new request must change something).
HOPELESS = ("PartitionConfig", "ReqNodeNotAvail", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
            "InvalidAccount", "InvalidQOS", "PartitionDown", "PartitionInactive", "NodeDown")
POLL_S = 2.0
# What a state that ended a job without a result means, and what to do about it.
WHY = {"CANCELLED": "was cancelled (scancel)", "NODE_FAIL": "lost its node (node failure)",
       "OUT_OF_MEMORY": "was killed for memory (raise hydra.launcher.mem_gb)", "PREEMPTED": "was preempted",
       "BOOT_FAIL": "could not boot its node", "DEADLINE": "reached its deadline", "FAILED": "failed (see its log)"}


class SlurmSweep(SlurmLauncher):
    """Hydra's SlurmLauncher with kdrun's waiting, failures, resume and requeue (see the module docstring)."""

    def __init__(self, resume: bool = False, cancel_on_interrupt: bool = True, hopeless_pending_s: int = 60,
                 **params: Any) -> None:
        super().__init__(**params)
        self.resume, self.cancel_on_interrupt, self.hopeless_pending_s = resume, cancel_on_interrupt, hopeless_pending_s

    # -- on the submitting machine ---------------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        results: dict[int, JobReturn] = {}
        if self.resume:
            results = {n: r for n, o in zip(numbers, job_overrides) if (r := self._settled(n, o)) is not None}
        todo = [(n, list(o)) for n, o in zip(numbers, job_overrides) if n not in results]
        if todo:
            jobs = self._submit(sweep_dir, todo)
            results.update(self._wait(sweep_dir, todo, jobs))
        return [results[n] for n in numbers]

    def _settled(self, number: int, overrides: Sequence[str]) -> Optional[JobReturn]:
        """In a resumed sweep, the result of a job that needs no new run (finished, or failed for its settings)."""
        from kdrun.sweep.resume import FAILS_AGAIN, FINISHED, finished_result, job_step

        job_dir, config = self._job_dir(number), self.config
        step = job_step(job_dir)
        if step not in (FINISHED, FAILS_AGAIN):
            return None
        return _result(config, overrides, finished_result(job_dir) if step == FINISHED else math.nan)

    def _job_dir(self, number: int) -> Path:
        """Where job `number` runs (its run dir), as Hydra composes it for the job."""
        from kdrun.sweep.resume import job_dir_of

        config = self.config.copy()
        with open_dict(config):
            config.hydra.job.num = number
        return job_dir_of(config)

    def _executor(self) -> Any:
        """submitit's executor with this sweep's parameters, mapped as Hydra's launcher maps them."""
        import submitit

        params = fit_resources(self.params, read_partition(self.params.get("partition")))
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def _submit(self, sweep_dir: Path, todo: list[tuple[int, list[str]]]) -> list[Any]:
        """One array job for the jobs to run; a refused request is one line, and a new sweep leaves no dir."""
        from submitit.core.utils import FailedSubmissionError, UncompletedJobError

        try:
            executor = self._executor()
            state = Singleton.get_state()
            with redirect_stderr(io.StringIO()):  # submitit prints sbatch's stderr, then raises it: said once below
                jobs = executor.map_array(self, [o for _, o in todo], ["hydra.sweep.dir"] * len(todo),
                                          [n for n, _ in todo], [f"job_id_for_{n}" for n, _ in todo],
                                          [state] * len(todo))
        except (KdrunError, UncompletedJobError, FailedSubmissionError, OSError) as error:  # sbatch's, or ours
            if not self.resume:  # nothing of this sweep ran: no dir that looks like one
                shutil.rmtree(sweep_dir, ignore_errors=True)
            sys.exit(fail(refusal(error)))
        for (number, overrides), job in zip(todo, jobs):
            print(f"kdrun: job {number} is SLURM job {job.job_id}: {' '.join(filter_overrides(overrides))}",
                  flush=True)
        return jobs

    def _wait(self, sweep_dir: Path, todo: list[tuple[int, list[str]]], jobs: list[Any]) -> dict[int, JobReturn]:
        """Every job's result, once all have ended; Ctrl-C cancels them (unless cancel_on_interrupt=false)."""
        try:
            watch(jobs, self.hopeless_pending_s)
        except KeyboardInterrupt:
            if self.cancel_on_interrupt:
                cancel(jobs)
                said = (f"cancelled SLURM job(s) {', '.join(j.job_id for j in jobs)}; continue the sweep with "
                        f"resume={sweep_dir}")
            else:
                said = (f"the sweep's jobs run on (squeue -j {jobs[0].job_id.split('_')[0]}); report them later with "
                        f"`kdrun report {sweep_dir}`")
            print(f"kdrun: interrupted: {said}", file=sys.stderr, flush=True)
            sys.exit(130)
        except HopelessWait as error:
            cancel(jobs)
            sys.exit(fail(str(error)))
        return {number: self._result(number, overrides, job) for (number, overrides), job in zip(todo, jobs)}

    def _result(self, number: int, overrides: list[str], job: Any) -> JobReturn:
        """The job's own return, or a failed run whose status.json says what SLURM did to it."""
        from submitit.core.utils import UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError as error:
            job_dir = self._job_dir(number)
            reason = ended_because(job, error, job_dir, self.params)
            job_dir.mkdir(parents=True, exist_ok=True)
            write_failure(job_dir, reason)
            print(f"kdrun: job {number}: {reason}", file=sys.stderr, flush=True)
            return _result(self.config, overrides, math.nan)  # as a job that failed in kdrun returns

    # -- in the job, on a node -------------------------------------------------------------------------------

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Singleton]) -> JobReturn:
        import submitit

        Singleton.set_state(singleton_state)
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.id = submitit.JobEnvironment().job_id
            config.hydra.job.num = job_num
        continue_or_restart(config)
        with checkpoint_on_signal() as requeue:
            result = None
            try:
                result = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                                 job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")
            finally:
                if requeue.asked:  # last.pt is saved: submitit's handler requeues the job (or says why not)
                    requeue.submitit_handler(requeue.asked, None)
        return result


class HopelessWait(KdrunError):
    """A job pends for a reason that waiting will not resolve."""


def refusal(error: Exception) -> str:
    """One line for a sweep that could not be submitted: sbatch's own error line, or kdrun's refusal."""
    if isinstance(error, KdrunError):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if "error:" in line]
    said = lines[-1].split("error:", 1)[1].strip() if lines else f"{type(error).__name__}: {str(error)[:200]}"
    return (f"sbatch refused the sweep's jobs ({said}); check hydra.launcher.partition, cpus_per_task, mem_gb and "
            "gpus_per_node against `sinfo`, nothing was submitted")


def squeue_reasons(jobs: list[Any]) -> dict[str, tuple[str, str]]:
    """Each queued job's state and reason, by job id (`squeue`; the array's tasks as 12_0, 12_1, ...)."""
    arrays = sorted({j.job_id.split("_")[0] for j in jobs})
    done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T|%r"], capture_output=True,
                          text=True)
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2]
    return {r[0]: (r[1], r[2]) for r in rows}


def watch(jobs: list[Any], hopeless_after_s: float) -> None:
    """Wait until every job has ended, with one progress line (running, pending and why); HopelessWait when a
    job pends for longer than `hopeless_after_s` for a reason that waiting does not resolve (it may be a passing
    state, a node rebooting: hence the grace)."""
    hopeless_since: dict[str, float] = {}
    shown = ""
    while True:
        queued = squeue_reasons(jobs)
        if all(ended(job, queued) for job in jobs):
            return
        pending = {i: reason for i, (state, reason) in queued.items() if state == "PENDING"}
        running = sum(state == "RUNNING" for state, _ in queued.values())
        reasons = sorted(set(pending.values()) - {"None"})
        line = (f"kdrun: waiting for SLURM: {running} running, {len(pending)} pending"
                + (f" ({', '.join(reasons)})" if reasons else ""))
        if line != shown:
            print(line, flush=True)
            shown = line
        now = time.monotonic()
        for job_id, reason in pending.items():
            if any(reason.startswith(h) for h in HOPELESS):
                if now - hopeless_since.setdefault(job_id, now) > hopeless_after_s:
                    raise HopelessWait(f"SLURM job {job_id} pended {hopeless_after_s:g} s with Reason={reason}, "
                                       "which waiting does not resolve (hydra.launcher.hopeless_pending_s); cancelled "
                                       "the sweep's jobs: fix the partition or the request, then resume the sweep")
            else:
                hopeless_since.pop(job_id, None)
        time.sleep(POLL_S)


def ended(job: Any, queued: dict[str, tuple[str, str]]) -> bool:
    """A job has ended when it left its result, or left the queue and sacct says so (submitit alone polls sacct
    every few minutes at most, so a cancelled job would keep the sweep waiting)."""
    return job.paths.result_pickle.exists() or (job.job_id not in queued and job.done(force_check=True))


def cancel(jobs: list[Any]) -> None:
    for job in jobs:
        try:
            job.cancel(check=False)
        except Exception:  # noqa: BLE001 - it may have ended meanwhile
            pass


def ended_because(job: Any, error: Exception, job_dir: Path, params: dict[str, Any]) -> str:
    """The one line of a job SLURM ended without a result: its state (sacct, through submitit) and what it means."""
    if "timed-out too many times" in str(error):  # submitit's refusal to requeue, before SLURM's own TIMEOUT
        state = "TIMEOUT"
        why = (f"reached its time limit (hydra.launcher.timeout_min={params.get('timeout_min')}) with no requeue "
               f"left (hydra.launcher.max_num_timeout={params.get('max_num_timeout')})")
    else:
        state = str(job.state).split()[0] if job.state else "UNKNOWN"
        why = WHY.get(state, f"ended in state {state}")
        if state == "TIMEOUT":
            why = f"reached its time limit (hydra.launcher.timeout_min={params.get('timeout_min')})"
    saved = "; last.pt holds its progress" if (job_dir / LAST).is_file() else ""
    return f"SLURM job {job.job_id} {why} [{state}]{saved}; resume the sweep to run it again"


class checkpoint_on_signal:
    """While a job runs: submitit's checkpoint signal (SIGUSR2 here) asks kdrun's training to stop after its current
    step and save last.pt (kdrun.run.signals); submitit's own handler, kept here, then requeues the job."""

    def __enter__(self) -> "checkpoint_on_signal":
        self.asked: Optional[int] = None
        self.signum = signal.SIGUSR2
        self.submitit_handler = signal.getsignal(self.signum)
        if callable(self.submitit_handler):
            signal.signal(self.signum, self._stop)
        return self

    def _stop(self, signum: int, frame: object) -> None:
        from kdrun.run.signals import active

        self.asked = signum
        running = active()
        if running is None:  # no run in progress (still composing, or done): submitit's handler, at once
            self.submitit_handler(signum, frame)
        else:
            running.handle(signum, frame)

    def __exit__(self, *exc: object) -> None:
        if callable(self.submitit_handler):
            signal.signal(self.signum, self.submitit_handler)


def continue_or_restart(config: DictConfig) -> None:
    """A job starting in a dir a former attempt left (requeue, resume): continue from its last.pt, else clear it."""
    from kdrun.run.rundir import forget_unfinished
    from kdrun.sweep.resume import CONTINUE, RESTART, continue_from_last, job_dir_of, job_step

    job_dir = job_dir_of(config)
    step = job_step(job_dir)
    if step == CONTINUE:
        continue_from_last(job_dir, config)
    elif step == RESTART:
        forget_unfinished(job_dir)


def _result(config: DictConfig, overrides: Sequence[str], value: float) -> JobReturn:
    return JobReturn(overrides=list(overrides), cfg=config, hydra_cfg=config, working_dir=str(Path.cwd()),
                     task_name=str(config.hydra.job.name), status=JobStatus.COMPLETED, _return_value=value)
