"""The real CLI in subprocesses: commands, the output contract, sweeps, bad input."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import FAST, kdrun, run_dirs, summary

SUMMARY_KEYS = {"command", "dataset", "model", "seed", "epochs", "test_acc", "best_test_acc", "best_epoch", "params",
                "latency", "train_seconds", "checkpoint"}
LATENCY_KEYS = {"batch1_ms_median", "batch1_ms_p90", "throughput_per_s", "batch_size", "device", "threads"}


def test_help_lists_commands_without_importing_torch():
    code = "import sys; from kdrun.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train-teacher" in out and "distill" in out
    assert out.strip().endswith("False")


def test_the_kdrun_process_ends_without_the_final_collection_over_torchs_objects():
    """What makes a short run end 0.75 s sooner (kdrun.__main__; `make bench`'s cold-start row measures it)."""
    code = ("import gc, sys; sys.argv = ['kdrun', '--help']; from kdrun.__main__ import run; run(); "
            "print('frozen:', gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("frozen: True")


@pytest.mark.parametrize("args", [["distill", "--help"], ["train-teacher", "-h"], ["distill", "loss=dkd", "--cfg", "job"],
                                  ["distill", "T=2", "--cfg", "all"]])
def test_command_help_and_cfg_job_never_import_torch(workdir, args):
    code = ("import atexit, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
            f"from kdrun.cli import main; main({args!r})")
    run = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("torch imported: False")


def test_command_help_and_cfg_job(workdir):
    help_text = kdrun(workdir, "distill", "--help").stdout
    assert "alpha" in help_text and "dataset: " in help_text and "mnist1d" in help_text
    cfg = kdrun(workdir, "distill", "T=2", "alpha=0.5", "--cfg", "job")
    assert cfg.returncode == 0
    assert "T: 2.0" in cfg.stdout and "alpha: 0.5" in cfg.stdout
    assert not (workdir / "outputs").exists(), "--cfg job must not create a run"


def test_train_teacher_then_distill_reuses_it_and_writes_the_contract(workdir):
    teacher_run = kdrun(workdir, "train-teacher", *FAST, "epochs=2")
    assert teacher_run.returncode == 0, teacher_run.stderr
    [teacher_dir] = run_dirs(workdir, "train_teacher")
    teacher_summary = summary(teacher_dir)
    assert teacher_summary["epochs"] == 2 and teacher_summary["reused"] is False

    run = kdrun(workdir, "distill", *FAST, "teacher.train.epochs=2", "epochs=2", "T=3", "alpha=0.6", "seed=5")
    assert run.returncode == 0, run.stderr
    [distill_dir] = run_dirs(workdir, "distill")
    assert "Training teacher" not in (distill_dir / "distill.log").read_text()
    s = summary(distill_dir)
    assert SUMMARY_KEYS | {"T", "alpha", "teacher", "speedup"} <= set(s)
    assert LATENCY_KEYS <= set(s["latency"]) and s["latency"]["device"] == "cpu"
    assert (s["T"], s["alpha"], s["seed"], s["epochs"]) == (3.0, 0.6, 5, 2)
    assert s["teacher"]["checkpoint"] == teacher_summary["checkpoint"]
    assert s["teacher"]["test_acc"] == pytest.approx(teacher_summary["test_acc"])
    assert s["speedup"] == pytest.approx(s["teacher"]["latency"]["batch1_ms_median"] / s["latency"]["batch1_ms_median"])
    rows = [json.loads(line) for line in (distill_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "test_acc", "lr", "seconds", "ce", "kd"} <= set(rows[0])
    assert s["best_test_acc"] == max(r["test_acc"] for r in rows) and s["test_acc"] == rows[-1]["test_acc"]
    assert (distill_dir / ".hydra" / "config.yaml").exists() and (distill_dir / "distill.log").exists()
    checkpoint = torch.load(distill_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["arch"] == "mlp" and checkpoint["num_classes"] == 10 and checkpoint["config"]["T"] == 3.0
    assert set(checkpoint["state_dict"]) and checkpoint["metrics"]["test_acc"] == s["test_acc"]


def test_multirun_gives_each_job_a_dir_and_trains_the_teacher_once(workdir):
    run = kdrun(workdir, "distill", "-m", *FAST, "T=1,4")
    assert run.returncode == 0, run.stderr
    jobs = run_dirs(workdir, "distill")
    assert len(jobs) == 2
    assert sorted(summary(j)["T"] for j in jobs) == [1.0, 4.0]
    logs = "".join((j / "distill.log").read_text() for j in jobs)
    assert logs.count("Training teacher") == 1
    assert len(list((workdir / "outputs" / "teachers").glob("*.pt"))) == 1


@pytest.mark.parametrize("override,message", [
    ("T=0", "T must be > 0"), ("alpha=1.1", "alpha must be in [0, 1]"), ("T=hot", "invalid value for T"),
    ("bogus=1", "unknown key 'bogus'"), ("student=nope", "unknown student 'nope'"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(workdir, override, message):
    run = kdrun(workdir, "distill", override)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and message in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not (workdir / "outputs").exists()


def test_missing_teacher_with_training_switched_off_names_the_command(workdir):
    run = kdrun(workdir, "distill", *FAST, "teacher.train_if_missing=false")
    assert run.returncode == 2
    assert "kdrun train-teacher" in run.stderr and "Traceback" not in run.stderr
    [failed] = run_dirs(workdir, "distill")
    assert not (failed / "summary.json").exists()
    assert json.loads((failed / "status.json").read_text())["status"] == "failed"


def test_explicit_checkpoint_is_checked_against_the_teacher(workdir):
    assert kdrun(workdir, "train-teacher", *FAST).returncode == 0
    [teacher_dir] = run_dirs(workdir, "train_teacher")
    wrong_arch = kdrun(workdir, "distill", *FAST, f"teacher.checkpoint={teacher_dir / 'checkpoint.pt'}",
                       "teacher.name=mlp")
    assert wrong_arch.returncode == 2 and "holds a 'cnn1d' but teacher=mlp" in wrong_arch.stderr
    missing = kdrun(workdir, "distill", *FAST, f"teacher.checkpoint={workdir / 'nope.pt'}")
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
