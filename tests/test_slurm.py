"""`hydra/launcher=slurm` on a real Slurm (`make test-slurm`: tests/slurm/start.sh, 2 emulated nodes n1, n2 of
partition `cpu`): failures are results, sbatch's and kdrun's refusals are one line, a requeue or a time limit
continues from last.pt, resume goes back to SLURM, threads follow SLURM_CPUS_PER_TASK, DDP across the nodes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import HANG_GUARD, kdrun, metric_rows, start_kdrun, summary, wait_until

pytestmark = pytest.mark.slurm

# One CPU and 1 GB per job: the 3 jobs of a sweep run side by side on the 2 nodes (2 CPUs each).
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
# train-student's share of tests/conftest.py's FAST settings.
FAST = ["dataset=fake", "progress=false", "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1"]
# Epochs of about half a second, so a job can be stopped mid-training.
SLOW = [*FAST, "dataset.kwargs.num_train=20000"]


def sweep_dir(cwd: Path) -> Path | None:
    found = sorted(cwd.glob("outputs/train_student-sweep/*/multirun.yaml"))
    return found[-1].parent if found else None


def slurm_id(sweep: Path, job: int) -> str | None:
    """The SLURM job id of job `job` of the sweep once submitted (submitit's folder for it: `ARRAY_JOB` in an array,
    else the plain id of a sweep's one job)."""
    folders = [p.name for p in (sweep / ".submitit").glob("*") if p.is_dir()]
    in_array = [name for name in folders if name.endswith(f"_{job}")]
    alone = [name for name in folders if "_" not in name] if job == 0 and len(folders) == 1 else []
    return (in_array or alone or [None])[0]


def queued() -> dict[str, tuple[str, str]]:
    done = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True, text=True, check=True)
    return {i: (state, reason) for i, state, reason in (line.split("|") for line in done.stdout.splitlines())}


def release_requeued(held_since: dict[str, float]) -> None:
    """Slurm 22.05 holds a requeued job about 2 minutes (BeginTime); a test lets it start after a few seconds. At
    once would be too soon: the node may still hold the killed run's revoked credential, and the new start
    fails ("Killing non-startable batch job: Job credential revoked")."""
    now = time.monotonic()
    for job_id, (state, reason) in queued().items():
        if state == "PENDING" and reason == "BeginTime":
            if now - held_since.setdefault(job_id, now) >= 5:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
                held_since.pop(job_id)
        else:
            held_since.pop(job_id, None)


def finish(process: subprocess.Popen, release: bool = False) -> tuple[str, str]:
    """Wait for a background kdrun (releasing requeued jobs if asked); its stdout and stderr."""
    deadline, held_since = time.monotonic() + 600, {}
    while process.poll() is None and time.monotonic() < deadline:
        if release:
            release_requeued(held_since)
        time.sleep(1)
    return process.communicate(timeout=HANG_GUARD)


def sacct(job_id: str) -> list[str]:
    """Every state SLURM's accounting recorded for the job (one per start: REQUEUED, then COMPLETED)."""
    done = subprocess.run(["sacct", "-n", "-X", "-D", "-j", job_id, "-o", "JobID%20,State%20"], capture_output=True,
                          text=True, check=True)
    return [line.split()[1] for line in done.stdout.splitlines() if line.strip()]


def epochs(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in metric_rows(run_dir)]


def test_a_cancelled_job_is_a_failed_run_and_resume_sends_it_back_to_slurm(workdir):
    sweep = start_kdrun(workdir, "train-student", "-m", *SLURM, *SLOW, "epochs=16", "seed=0,1,2")
    wait_until(lambda: (s := sweep_dir(workdir)) is not None and len(metric_rows(s / "1")) >= 1, sweep, timeout=240)
    cancelled = slurm_id(sweep_dir(workdir), 1)
    subprocess.run(["scancel", cancelled], check=True)
    out, err = finish(sweep)
    swept = sweep_dir(workdir)

    assert sweep.returncode == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("kdrun: error: 1 job(s) of this sweep did not finish"), err
    status = json.loads((swept / "1" / "status.json").read_text())
    assert status["status"] == "failed" and f"SLURM job {cancelled} was cancelled" in status["error"], status
    assert "CANCELLED" in status["error"]
    assert f"job 1 failed: SLURM job {cancelled}" in out, "the report names the failed job and why"
    assert [p.name for p in sorted(swept.glob("*/summary.json"))] == ["summary.json"] * 2
    assert (swept / "0" / "summary.json").exists() and (swept / "2" / "summary.json").exists()

    resumed = kdrun(workdir, "train-student", f"resume={swept}")
    assert resumed.returncode == 0, resumed.stderr
    assert "running 1" in resumed.stdout
    [again] = re.findall(r"kdrun: job 1 is SLURM job (\S+):", resumed.stdout)
    assert again != cancelled, "job 1 ran again as a new SLURM job"
    wait_until(lambda: sacct(again) == ["COMPLETED"], timeout=60)  # accounting follows the job's result by a moment
    assert summary(swept / "1")["seed"] == 1
    assert epochs(swept / "1") == list(range(1, 17)), "each epoch once, whether continued from last.pt or restarted"


def test_refused_requests_are_one_line_and_leave_no_sweep(workdir):
    cases = {"hydra.launcher.cpus_per_task=8": "hydra.launcher.cpus_per_task=8 asks for 8 CPUs, but partition cpu's "
                                               "nodes have at most",
             "hydra.launcher.gpus_per_node=1": "hydra.launcher.gpus_per_node=1 asks for 1 GPUs",
             "hydra.launcher.constraint=bigmem": "sbatch refused the sweep's jobs (Batch job submission failed: "
                                                 "Invalid feature specification)",
             "hydra.launcher.timeout_min=1": "hydra.launcher.timeout_min=1 (60 s) leaves no time to train before "
                                             "submitit's checkpoint signal"}
    for override, line in cases.items():
        done = kdrun(workdir, "train-student", "-m", "hydra/launcher=slurm", override, *FAST, "seed=0,1")
        assert done.returncode == 2, (override, done.stderr)
        [said] = done.stderr.strip().splitlines()
        assert said.startswith(f"kdrun: error: {line}"), said
        assert sweep_dir(workdir) is None and not list(workdir.glob("outputs/train_student-sweep/*/")), override
    alone = kdrun(workdir, "train-student", "hydra/launcher=slurm", *FAST)
    assert alone.returncode == 2 and "add -m" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1


def test_a_requeued_job_continues_from_last_pt_and_ends_as_an_uninterrupted_run(workdir):
    settings = [*SLOW, "epochs=24", "seed=3"]
    reference = start_kdrun(workdir, "train-student", *settings, "hydra.run.dir=" + str(workdir / "reference"))
    sweep = start_kdrun(workdir, "train-student", "-m", *SLURM, *settings)
    wait_until(lambda: (s := sweep_dir(workdir)) is not None and len(metric_rows(s / "0")) >= 3, sweep, timeout=240)
    job_id = slurm_id(sweep_dir(workdir), 0)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    out, err = finish(sweep, release=True)
    finish(reference)
    job = sweep_dir(workdir) / "0"

    assert sweep.returncode == 0, err
    wait_until(lambda: sacct(job_id)[-1:] == ["COMPLETED"], timeout=60)
    assert sacct(job_id)[0] == "REQUEUED"
    assert "Resuming from" in (job / "train_student.log").read_text()
    assert epochs(job) == list(range(1, 25)), "each epoch once"
    assert summary(job)["test_acc"] == summary(workdir / "reference")["test_acc"]
    assert metric_rows(job)[-1]["train_loss"] == metric_rows(workdir / "reference")[-1]["train_loss"]


def test_a_time_limit_saves_last_pt_and_the_job_continues_after_its_requeue(workdir):
    # submitit's signal comes signal_delay_s=30 s before the 1-minute limit (Slurm sends it 15-30 s into a start).
    # More epochs than any start can train, whatever the machine's load: once the job has continued from last.pt
    # for 3 epochs after a requeue, the test cancels it.
    sweep = start_kdrun(workdir, "train-student", "-m", *SLURM, "hydra.launcher.timeout_min=1",
                        "hydra.launcher.signal_delay_s=30", *SLOW, "epochs=100000", "seed=4")
    held_since: dict[str, float] = {}

    def continued() -> bool:
        release_requeued(held_since)
        log = (sweep_dir(workdir) / "0" / "train_student.log") if sweep_dir(workdir) else None
        found = re.search(r"Resuming from \S+: (\d+) epochs done", log.read_text()) if log and log.exists() else None
        return found is not None and len(metric_rows(log.parent)) >= int(found.group(1)) + 3

    wait_until(continued, sweep, timeout=300, poll=1)
    job, job_id = sweep_dir(workdir) / "0", slurm_id(sweep_dir(workdir), 0)
    subprocess.run(["scancel", job_id], check=True)
    out, err = finish(sweep)

    assert "REQUEUED" in sacct(job_id)
    log = "".join(p.read_text() for p in (sweep_dir(workdir) / ".submitit" / job_id).glob("*.err"))
    assert "SIGUSR2 received; stopping after this step and saving a checkpoint" in log
    assert "this job is timed-out" in log
    done = epochs(job)
    assert done == list(range(1, len(done) + 1)), "each epoch once, across the requeue"
    assert sweep.returncode == 2 and f"SLURM job {job_id} was cancelled" in err, err


def test_ddp_across_the_two_nodes_equals_one_process_with_one_thread_per_task(workdir):
    # SGD, as tests/test_distributed.py's torchrun check (AdamW's normalisation magnifies float rounding).
    settings = [*FAST, "epochs=2", "seed=5", "threads=0", "optim=sgd", "optim.lr=0.05", "optim.batch_size=32"]
    reference = start_kdrun(workdir, "train-student", *settings, "threads=1",
                            "hydra.run.dir=" + str(workdir / "reference"))
    done = kdrun(workdir, "train-student", "-m", *SLURM, "hydra.launcher.nodes=2", *settings)
    finish(reference)
    assert done.returncode == 0, done.stderr
    job = sweep_dir(workdir) / "0"
    threads = summary(job)["threads"]
    assert threads["threads"] == 1 and threads["limited_by"] == "SLURM_CPUS_PER_TASK", threads
    assert "rank 0 of 2" in (job / "train_student.log").read_text()
    nodes = subprocess.run(["sacct", "-n", "-X", "-j", slurm_id(sweep_dir(workdir), 0), "-o", "NodeList%20"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert nodes == ["n[1-2]"], "one task on each emulated node"
    ours, theirs = (torch.load(d / "checkpoint.pt", weights_only=True)["state_dict"]
                    for d in (job, workdir / "reference"))
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-6
    assert summary(job)["test_acc"] == summary(workdir / "reference")["test_acc"]


def test_two_tasks_on_one_node_take_one_thread_each(workdir):
    done = kdrun(workdir, "train-student", "-m", *SLURM, "hydra.launcher.tasks_per_node=2", *FAST, "epochs=1",
                 "threads=0")
    assert done.returncode == 0, done.stderr
    job = sweep_dir(workdir) / "0"
    threads = summary(job)["threads"]
    assert threads["threads"] == 1 and threads["usable_cpus"] == 1, threads
    logs = [p.read_text() for p in (sweep_dir(workdir) / ".submitit").glob("*/*_log.err")]
    assert len(logs) == 2, "one log per task"


def test_ctrl_c_while_waiting_cancels_the_sweeps_jobs_in_one_line(workdir):
    sweep = start_kdrun(workdir, "train-student", "-m", *SLURM, *SLOW, "epochs=30", "seed=0,1")
    wait_until(lambda: (s := sweep_dir(workdir)) is not None and all(slurm_id(s, j) for j in (0, 1)), sweep,
               timeout=240)
    ids = [slurm_id(sweep_dir(workdir), j) for j in (0, 1)]
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=HANG_GUARD)

    assert sweep.returncode == 130, err
    assert err.strip().splitlines() == [f"kdrun: interrupted: cancelled SLURM job(s) {', '.join(ids)}; continue the "
                                        f"sweep with resume={sweep_dir(workdir)}"]
    # the array: one record per task that started, one for those that did not
    wait_until(lambda: set(sacct(ids[0].split("_")[0])) == {"CANCELLED"}, timeout=60)


def test_a_wait_that_cannot_end_ends_in_one_line(workdir):
    subprocess.run(["scontrol", "update", "PartitionName=cpu", "State=DOWN"], check=True)
    try:
        done = kdrun(workdir, "train-student", "-m", *SLURM, "hydra.launcher.hopeless_pending_s=3", *FAST,
                     "seed=0,1")
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=cpu", "State=UP"], check=True)
    assert done.returncode == 2, done.stderr
    [said] = done.stderr.strip().splitlines()
    assert "pended 3 s with Reason=PartitionDown, which waiting does not resolve" in said, said
    assert "waiting for SLURM: 0 running, 2 pending (PartitionDown)" in done.stdout
    array = slurm_id(sweep_dir(workdir), 0).split("_")[0]
    wait_until(lambda: set(sacct(array)) == {"CANCELLED"}, timeout=60)


def test_ctrl_c_can_leave_the_jobs_running(workdir):
    sweep = start_kdrun(workdir, "train-student", "-m", *SLURM, "hydra.launcher.cancel_on_interrupt=false", *FAST,
                        "epochs=2", "seed=0")
    wait_until(lambda: (s := sweep_dir(workdir)) is not None and slurm_id(s, 0) is not None, sweep, timeout=240)
    job_id = slurm_id(sweep_dir(workdir), 0)
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=HANG_GUARD)

    assert sweep.returncode == 130, err
    [said] = err.strip().splitlines()
    assert said.startswith(f"kdrun: interrupted: the sweep's jobs run on (squeue -j {job_id})"), said
    wait_until(lambda: sacct(job_id)[-1:] == ["COMPLETED"], timeout=240)
    assert (sweep_dir(workdir) / "0" / "summary.json").is_file(), "the job finished on its own"
