"""Run dirs written by kdrun before the package regrouping (tests/data/runs_v0_1) still report, resume and load.

The fixture was written by kdrun 0.1.0 at commit 588b044 (flat `kdrun/` modules): a finished distill run,
an interrupted one (status.json + last.pt at epoch 2 of 400) and the teacher store's checkpoint they used.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import FAST, kdrun, metric_rows, summary

FIXTURE = Path(__file__).parent / "data" / "runs_v0_1"
TEACHER = "teachers/cnn1d-fake-0570253cbd4d.pt"


@pytest.fixture
def old_outputs(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "outputs")
    return tmp_path


def test_an_old_finished_run_is_reported(old_outputs):
    run = kdrun(old_outputs, "report", "outputs/distill/finished")
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader((old_outputs / "outputs/distill/finished/report.csv").open()))
    assert [r["role"] for r in rows] == ["distill"]
    assert float(rows[0]["test_acc_mean"]) == summary(old_outputs / "outputs/distill/finished")["test_acc"]


def test_an_old_interrupted_run_resumes_from_its_last_pt(old_outputs):
    run_dir = old_outputs / "outputs/distill/interrupted"
    stopped_at = json.loads((run_dir / "status.json").read_text())["epoch"]
    run = kdrun(old_outputs, "distill", f"resume={run_dir}")
    assert run.returncode == 0, run.stderr
    epochs = [row["epoch"] for row in metric_rows(run_dir)]
    assert epochs == list(range(1, 401)) and stopped_at < 400
    assert summary(run_dir)["epochs"] == 400 and not (run_dir / "status.json").exists()


def test_an_old_teacher_checkpoint_loads_as_the_teacher(old_outputs):
    run = kdrun(old_outputs, "distill", *FAST, "epochs=1", f"teacher.checkpoint=outputs/{TEACHER}",
                "hydra.run.dir=outputs/distill/new")
    assert run.returncode == 0, run.stderr
    assert summary(old_outputs / "outputs/distill/new")["teacher"]["checkpoint"].endswith(TEACHER)
