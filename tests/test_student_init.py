"""student.init=PATH: the student starts from a checkpoint (kdrun's own or a peer format) that must fit it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import kdrun, metric_rows, run_dirs, summary

from kdrun.commands.setup import init_student
from kdrun.core.errors import KdrunError
from kdrun.data import load_dataset
from kdrun.models import build_model

TINY = ["dataset=fake", "progress=false", "epochs=1", "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1"]


def test_a_student_continues_from_a_runs_checkpoint(workdir):
    """With a learning rate too small to move it, the student started from run A's checkpoint scores A's
    accuracy after its first epoch; from `seed`'s weights it would score near chance."""
    first = kdrun(workdir, "train-student", *TINY, "optim.lr=0.05")
    assert first.returncode == 0, first.stderr
    [trained] = run_dirs(workdir, "train_student")
    second = kdrun(workdir, "train-student", *TINY, f"student.init={trained / 'checkpoint.pt'}", "optim.lr=1e-12",
                   "seed=7")
    assert second.returncode == 0, second.stderr
    [continued] = [d for d in run_dirs(workdir, "train_student") if d != trained]
    assert metric_rows(continued)[0]["test_acc"] == summary(trained)["test_acc"]
    assert summary(continued)["paths"]["student_init"] == str(trained / "checkpoint.pt")


def test_student_init_reads_a_state_dict_and_refuses_one_that_does_not_fit(tmp_path):
    data = load_dataset("fake", "/unused", False, False, {})
    source = build_model("mlp", data.num_classes, data.input_shape, {"hidden": [16]})
    torch.save(source.state_dict(), tmp_path / "weights.pt")  # a plain state_dict, as peers save
    student = build_model("mlp", data.num_classes, data.input_shape, {"hidden": [16]})
    init_student(student, tmp_path / "weights.pt", "mlp", data)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), student.state_dict().values()))
    wider = build_model("mlp", data.num_classes, data.input_shape, {"hidden": [32]})
    with pytest.raises(KdrunError, match=r"does not fit this model .* is \(16, 3072\) in the file but \(32, 3072\)"):
        init_student(wider, tmp_path / "weights.pt", "mlp", data)


def test_a_missing_student_init_is_one_line_before_any_run_dir(workdir):
    run = kdrun(workdir, "train-student", *TINY, "student.init=nowhere.pt")
    assert run.returncode != 0 and run.stderr.strip().count("\n") == 0
    assert "student.init=nowhere.pt is not a file" in run.stderr and not (workdir / "outputs").exists()


def test_a_failed_run_says_why_in_its_own_log(workdir):
    data = load_dataset("fake", "/unused", False, False, {})
    torch.save(build_model("mlp", data.num_classes, data.input_shape, {"hidden": [7]}).state_dict(),
               workdir / "narrow.pt")
    run = kdrun(workdir, "train-student", *TINY, f"student.init={workdir / 'narrow.pt'}")
    assert run.returncode == 2
    [run_dir] = run_dirs(workdir, "train_student")
    reason = json.loads((run_dir / "status.json").read_text())["error"]
    assert "does not fit this model" in reason
    assert f"[ERROR] run failed: {reason}" in (run_dir / "train_student.log").read_text()
