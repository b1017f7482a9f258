"""Faults a long experiment meets: a failing sweep job, a full disk, a damaged cache, a second process, damaged runs.

Each ends in one line and a `status.json` (or a skipped-with-reason note), nothing half-written,
and the next run works.
"""

import json
import os
import resource
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FAST, HANG_GUARD, kdrun, metric_rows, summary
from test_bad_input import STUDENT, assert_one_line_error
from test_report import write_run

from kdrun.core.errors import KdrunError
from kdrun.core.files import write_json
from kdrun.data import load_dataset
from kdrun.models.checkpoint import load_payload
from kdrun.report import build_report
from kdrun.run.rundir import owned

ONE_EPOCH = [*STUDENT, "epochs=1"]


def child_env() -> dict:
    env = {**os.environ, "KDRUN_TEST": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def job_state(job) -> dict:
    return json.loads((job / "status.json").read_text())


def test_a_failing_job_does_not_stop_the_sweep_and_resume_runs_only_unfinished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    run = kdrun(tmp_path, "train-student", "-m", *ONE_EPOCH, "optim.lr=0.002,1e30,0.001", f"hydra.sweep.dir={sweep}",
                "keep_last=true")  # job 0 is made to look killed after its last checkpoint below
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert [(sweep / job / "summary.json").exists() for job in "012"] == [True, False, True]
    assert job_state(sweep / "1")["status"] == "failed" and "became nan" in job_state(sweep / "1")["error"]
    assert "job 1 failed: training loss became nan" in (sweep / "report.md").read_text()
    last = run.stderr.splitlines()[-1]
    assert "1 job(s) of this sweep did not finish" in last and "job 1 failed for its settings" in last
    assert "resume=" not in last, "no advice to replay a job that fails the same way"

    (sweep / "0" / "summary.json").unlink()  # job 0 killed after its last checkpoint: it continues from last.pt
    kept = (sweep / "2" / "summary.json").stat().st_mtime_ns
    diverged = (sweep / "1" / "status.json").read_bytes()
    again = kdrun(tmp_path, "train-student", f"resume={sweep}")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "1 of 3 job(s) finished; running 0; not rerunning 1 (failed for their settings" in again.stdout
    assert (sweep / "1" / "status.json").read_bytes() == diverged, "the diverged job is left as it was"
    assert (sweep / "0" / "summary.json").exists() and len(metric_rows(sweep / "0")) == 1
    assert (sweep / "2" / "summary.json").stat().st_mtime_ns == kept, "a finished job is never run again"
    assert job_state(sweep / "1")["status"] == "failed"
    assert "job 1 failed" in (sweep / "report.md").read_text() and "baseline" in (sweep / "report.md").read_text()


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_torch_writes_a_checkpoint_ends_in_one_line_and_a_status(tmp_path):
    run_dir = tmp_path / "run"
    env = child_env()
    run = subprocess.run([sys.executable, "-m", "kdrun", "train-student", *ONE_EPOCH, "student.kwargs.hidden=[256]",
                          f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=HANG_GUARD, preexec_fn=_file_size_limit(64 * 1024))
    error = assert_one_line_error(run, "cannot write or read", tmp_path)
    assert "last.pt" in error and "disk full or file too large" in error
    assert job_state(run_dir)["status"] == "failed"
    assert not list(run_dir.glob(".*.tmp")), "a failed atomic write leaves no temp file"
    assert not (run_dir / "last.pt").exists()
    fine = kdrun(tmp_path, "train-student", *ONE_EPOCH, "student.kwargs.hidden=[256]")
    assert fine.returncode == 0, fine.stderr


def test_a_damaged_dataset_cache_is_generated_again(tmp_path):
    kwargs = {"num_samples": 300}
    first = load_dataset("mnist1d", str(tmp_path), False, False, kwargs)
    [cache] = tmp_path.rglob("*.npz")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o666 & ~_umask(), "files follow the user's umask, not 0600"
    for damage in (cache.read_bytes()[:500], b"\x80\x04not an array"):
        cache.write_bytes(damage)
        again = load_dataset("mnist1d", str(tmp_path), False, False, kwargs)
        assert torch.equal(again.x_train, first.x_train)
        with np.load(cache, allow_pickle=False) as arrays:
            assert len(arrays["x"]) == len(first.x_train)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name], "no temp files left"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_unreadable_checkpoint_is_a_permission_problem_not_a_corrupt_file(tmp_path, monkeypatch):
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"whatever")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(KdrunError) as error:
        load_payload(path)
    assert "cannot read" in str(error.value) and "permissions" in str(error.value)
    assert "delete" not in str(error.value) and "corrupt" not in str(error.value)


def test_a_run_dir_in_use_is_refused_and_left_untouched(tmp_path):
    run_dir = tmp_path / "run"
    assert kdrun(tmp_path, "train-student", *ONE_EPOCH, "keep_last=true", f"hydra.run.dir={run_dir}").returncode == 0
    (run_dir / "summary.json").unlink()  # now it is an interrupted run, its last.pt complete
    log = (run_dir / "train_student.log").read_text()
    with owned(run_dir):  # as the live run holds it
        second = kdrun(tmp_path, "train-student", f"resume={run_dir}")
        assert_one_line_error(second, "is in use by another kdrun process", tmp_path)
        third = kdrun(tmp_path, "train-student", *ONE_EPOCH, f"hydra.run.dir={run_dir}")
        assert_one_line_error(third, f"{run_dir} already holds a run; pass another hydra.run.dir=DIR, or continue "
                                     f"it with resume={run_dir}", tmp_path)
    assert (run_dir / "train_student.log").read_text() == log, "a refused process writes nothing into the dir"
    resumed = kdrun(tmp_path, "train-student", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1]


def test_the_lock_is_held_for_the_life_of_a_run(tmp_path):
    probe = f"from pathlib import Path\nfrom kdrun.run.rundir import owned\nwith owned(Path({str(tmp_path)!r})): pass"
    with owned(tmp_path):
        with owned(tmp_path):  # the same process again (the CLI took it before Hydra, then its task): no-op
            pass
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=HANG_GUARD)
        assert other.returncode != 0 and "in use by another kdrun process" in other.stderr
    assert subprocess.run([sys.executable, "-c", probe], timeout=HANG_GUARD).returncode == 0  # released with the run


def test_train_teacher_resumes_after_its_checkpoint_was_linked_into_the_store(tmp_path):
    run_dir = tmp_path / "teacher"
    assert kdrun(tmp_path, "train-teacher", *FAST, "keep_last=true", f"hydra.run.dir={run_dir}").returncode == 0
    (run_dir / "summary.json").unlink()  # killed between linking checkpoint.pt and writing the summary
    again = kdrun(tmp_path, "train-teacher", f"resume={run_dir}")
    assert again.returncode == 0, again.stderr
    assert summary(run_dir)["reused"] and len(metric_rows(run_dir)) == 1


def test_report_skips_damaged_runs_with_the_reason_and_counts_only_averaged_seeds(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / f"ok{seed}", "train_student", seed, 0.5 + seed / 10)
    damaged = {"latin1": b"\xff\xfe not utf-8", "list": b"[1, 2]", "nan": None, "null": None, "config": None}
    for name, content in damaged.items():
        write_run(tmp_path / name, "train_student", 2, 0.9)
        if content is not None:
            (tmp_path / name / "summary.json").write_bytes(content)
    for name, value in (("nan", float("nan")), ("null", None)):
        data = json.loads((tmp_path / name / "summary.json").read_text())
        write_json(tmp_path / name / "summary.json", {**data, "test_acc": value})
    (tmp_path / "config" / ".hydra" / "config.yaml").write_text("a: [unclosed\n")
    report = build_report([tmp_path])
    [row] = report.rows
    assert len(row.runs) == 2 and row.stat("test_acc").mean == pytest.approx(0.55)
    skipped = [note for note in report.notes if note.startswith("skipped")]
    assert len(skipped) == 5
    assert any("latin1" in n and "not JSON" in n for n in skipped)
    assert any("list" in n and "not a JSON object" in n for n in skipped)
    assert any("nan" in n and "test_acc is nan" in n for n in skipped)
    assert any("null" in n and "test_acc is None" in n for n in skipped)
    assert any("config" in n and ".hydra/ unreadable" in n for n in skipped)


def test_report_out_on_a_file_is_one_line(tmp_path, capsys):
    from kdrun.cli import main as cli

    write_run(tmp_path / "run", "train_student", 0, 0.5)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert cli(["report", str(tmp_path / "run"), "--out", str(a_file)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot write the report to" in error and "--out DIR" in error


def test_a_closed_stdout_stops_the_run_with_a_resumable_status(tmp_path):
    run_dir = tmp_path / "run"
    env = child_env()
    child = subprocess.Popen([sys.executable, "-m", "kdrun", "train-student", *STUDENT, "epochs=3",
                              f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.stdout.readline()  # `kdrun ... | head -1`
    child.stdout.close()
    assert child.wait(timeout=HANG_GUARD) == 141
    stderr = child.stderr.read()
    assert "Traceback" not in stderr and "kdrun: the output was closed (SIGPIPE" in stderr
    status = job_state(run_dir)
    assert status["status"] == "interrupted" and status["resume"] == f"kdrun train-student resume={run_dir}"
    assert (run_dir / "last.pt").exists() and not (run_dir / "summary.json").exists()


def test_resume_from_another_directory_uses_the_same_teacher(tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    run_dir = here / "run"
    assert kdrun(here, "distill", *FAST, "epochs=1", "keep_last=true", f"hydra.run.dir={run_dir}").returncode == 0
    [stored] = (here / "outputs" / "teachers").glob("*.pt")
    assert summary(run_dir)["paths"]["teacher_store"] == str(stored.parent)
    (run_dir / "summary.json").unlink()  # killed after its last checkpoint
    resumed = kdrun(elsewhere, "distill", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert summary(run_dir)["teacher"]["checkpoint"] == str(stored)
    assert not (elsewhere / "outputs").exists(), "no teacher retrained into the new working directory"


def test_failures_the_user_can_act_on_get_their_line_and_bugs_keep_their_traceback():
    from kdrun.run.task import failure_message

    assert failure_message(KdrunError("T must be > 0")) == "T must be > 0"
    cuda = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: 8 GB")
    for error in (cuda, cpu):
        assert failure_message(error).startswith("out of memory (") and "lower optim.batch_size" in failure_message(error)
    full = OSError(28, "No space left on device", "/runs/x/last.pt")
    assert failure_message(full).startswith("cannot write or read /runs/x/last.pt (No space left on device)")
    assert "`| head`" in failure_message(BrokenPipeError(32, "Broken pipe"))
    assert failure_message(ZeroDivisionError("division by zero")) is None


def test_a_stop_signal_during_the_failure_line_is_caught_not_fatal(tmp_path, monkeypatch):
    """torchrun SIGTERMs the surviving ranks the moment one dies: the failure must be recorded and said with
    kdrun's stop handler still installed, or the default handler kills the rank before its one line."""
    from kdrun.run import task

    def invalid(cfg):
        raise KdrunError("the job's process group failed")

    handlers = []

    def record_fail(message, run_dir=None, rerun_fixes=True):
        handlers.append(signal.getsignal(signal.SIGTERM))
        return 2

    monkeypatch.setattr(task, "validate", invalid)
    monkeypatch.setattr(task, "fail", record_fail)
    before = signal.getsignal(signal.SIGTERM)
    assert np.isnan(task.run_owned(None, tmp_path, multirun=True))
    assert len(handlers) == 1 and handlers[0] not in (signal.SIG_DFL, before)
    assert signal.getsignal(signal.SIGTERM) == before, "the previous handler is back once the job has ended"
