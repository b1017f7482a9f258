"""One run on several processes with real `torchrun` (gloo on CPU): one run directory, the same weights as
one process with the same global batch, a killed rank ends the job with one line, DDP last.pt resumes;
and the SLURM environment's mapping to ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD, kdrun, metric_rows, run_dirs, summary, wait_until

from kdrun.core.distributed import Context, slurm_environment
from kdrun.run.rundir import CHECKPOINT, HYDRA, LAST, LOCK, METRICS, SUMMARY

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
COMMON = ["progress=false", "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1", "student=mlp",
          "optim=sgd", "optim.lr=0.05", "optim.batch_size=32"]
# Augmented images (each rank takes its share of every augmented global batch) and a live teacher with
# BatchNorm that both ranks train together when the store lacks it.
DISTILL = ["distill", *COMMON, "dataset=fake", "dataset.kwargs.shape=[3,16,16]", "dataset.augment=true",
           "teacher=resnet56", "teacher.name=resnet8", "teacher.train.epochs=1", "teacher.train.optim.batch_size=32",
           "epochs=2", "keep_last=true"]
SLOW = ["train-student", *COMMON, "dataset=fake", "dataset.kwargs.num_train=4000", "epochs=3"]


def environment() -> dict:
    env = {**os.environ, "KDRUN_TEST": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def torchrun(cwd: Path, *args: str, logs: Path | None = None) -> subprocess.Popen:
    """torchrun in the background; with `logs`, each rank's stdout/stderr go to files under it."""
    redirect = ["--log-dir", str(logs), "--redirects", "3"] if logs else []
    return subprocess.Popen([*TORCHRUN, *redirect, "-m", "kdrun", *args], cwd=cwd, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(job: subprocess.Popen, timeout: float = HANG_GUARD) -> tuple[int, str]:
    out, err = job.communicate(timeout=timeout)
    return job.returncode, out + err


def rank_pid(job: subprocess.Popen, rank: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        if f"RANK={rank}" in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0"):
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"]


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


CONTRACT = {"command", "dataset", "model", "seed", "T", "alpha", "epochs", "test_acc", "best_test_acc",
            "best_epoch", "params", "latency", "train_seconds", "checkpoint", "teacher", "speedup"}


def test_two_ranks_write_one_run_dir_and_match_one_process_with_the_same_global_batch(workdir):
    code, output = finish(torchrun(workdir, *DISTILL))
    assert code == 0, output
    [ddp] = run_dirs(workdir, "distill")
    assert {p.name for p in ddp.iterdir()} == {HYDRA, "distill.log", METRICS, SUMMARY, CHECKPOINT, LAST, LOCK}
    s = summary(ddp)
    assert CONTRACT <= s.keys() and {"model", "test_acc", "params", "latency", "checkpoint"} <= s["teacher"].keys()
    log = (ddp / "distill.log").read_text()
    assert "rank 0 of 2 (world size 2); global batch 32 = about 16 per rank" in log
    assert log.count("student epoch 1/2:") == 1, "only rank 0 logs to the run's file"
    assert len(metric_rows(ddp)) == 2 and torch.load(ddp / "last.pt", weights_only=True)["world_size"] == 2

    single = kdrun(workdir, *DISTILL, "hydra.run.dir=single")  # reuses the teacher the two ranks trained
    assert single.returncode == 0, single.stderr
    assert summary(workdir / "single")["teacher"]["checkpoint"] == s["teacher"]["checkpoint"]
    assert max_difference(ddp, workdir / "single") < 1e-6
    for a, b in zip(metric_rows(ddp), metric_rows(workdir / "single")):
        assert a["test_acc"] == b["test_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


# A hang would wait for the 30-minute collective timeout (kdrun.core.distributed); a slow machine takes seconds.
NOT_A_HANG = 600


def test_a_killed_rank_ends_the_job_with_one_line_not_a_hang(workdir):
    logs = workdir / "logs"
    job = torchrun(workdir, *SLOW, "epochs=1000", "hydra.run.dir=run", logs=logs)
    wait_until(lambda: len(metric_rows(workdir / "run")) >= 1, job)
    os.kill(rank_pid(job, 1), signal.SIGKILL)
    started = time.monotonic()
    code, _ = finish(job, timeout=NOT_A_HANG)
    assert code != 0 and time.monotonic() - started < NOT_A_HANG
    [rank0_stderr] = logs.glob("*/attempt_0/0/stderr.log")
    text = rank0_stderr.read_text()
    errors = [line for line in text.splitlines() if line.startswith("kdrun: error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    assert "another rank failed or was killed" in errors[0]
    assert json.loads((workdir / "run" / "status.json").read_text())["status"] == "failed"
    assert not (workdir / "run" / "summary.json").exists()


def test_an_interrupted_ddp_run_resumes_on_as_many_ranks_and_only_on_as_many(workdir):
    run_dir = workdir / "run"
    job = torchrun(workdir, *SLOW, f"hydra.run.dir={run_dir}")
    wait_until(lambda: len(metric_rows(run_dir)) >= 1, job)
    job.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    code, output = finish(job)
    assert code != 0 and not (run_dir / "summary.json").exists(), output
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert torch.load(run_dir / "last.pt", weights_only=True)["world_size"] == 2

    refused = kdrun(workdir, "train-student", f"resume={run_dir}")
    [line] = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and "saved by a run on 2 process(es) but this one has 1" in line
    assert f"torchrun --nproc_per_node=2 -m kdrun train-student resume={run_dir}" in line

    code, output = finish(torchrun(workdir, "train-student", f"resume={run_dir}"))
    assert code == 0, output
    assert [r["epoch"] for r in metric_rows(run_dir)] == [1, 2, 3]
    assert kdrun(workdir, *SLOW, "hydra.run.dir=single").returncode == 0
    assert max_difference(run_dir, workdir / "single") < 1e-5, "as if never interrupted (a restarted epoch is far off)"


def test_slurm_tasks_map_to_ranks_and_the_first_node_is_the_master():
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
           "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[017-018]"}
    mapped = slurm_environment(env)
    assert {k: mapped[k] for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "MASTER_ADDR": "gpu017", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert mapped["MASTER_PORT"] == slurm_environment(env)["MASTER_PORT"], "every task derives the same port"
    assert slurm_environment({**env, "MASTER_PORT": "12345"})["MASTER_PORT"] == "12345"
    assert slurm_environment({**env, "SLURM_JOB_NODELIST": "a01,b[3,5-6]"})["MASTER_ADDR"] == "a01"


def test_each_rank_takes_a_strided_share_of_a_global_batch():
    batch = torch.arange(7)
    shares = [Context(rank, 3).shard(batch).tolist() for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert Context().shard(batch) is not None and Context().shard(batch).tolist() == batch.tolist()
