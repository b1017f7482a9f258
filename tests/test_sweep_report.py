"""A real MNIST-1D sweep (2 T x 2 seeds) plus its baseline, then `kdrun report` on both."""

import csv
import statistics

import pytest
from conftest import kdrun, run_dirs, summary

TINY = ["teacher.kwargs.channels=8", "teacher.train.epochs=2", "student.kwargs.hidden=[16]", "epochs=2",
        "progress=false", "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1"]


def test_sweep_and_baseline_report_matches_the_summaries(workdir):
    assert kdrun(workdir, "train-student", "-m", "seed=0,1", *[o for o in TINY if "teacher" not in o]).returncode == 0
    sweep = kdrun(workdir, "distill", "-m", "T=1,4", "seed=0,1", *TINY)
    assert sweep.returncode == 0, sweep.stderr
    [sweep_dir] = (workdir / "outputs").glob("distill-sweep/*")
    assert (sweep_dir / "report.csv").exists(), "the multirun callback writes the report"
    [baseline_dir] = (workdir / "outputs").glob("train_student-sweep/*")

    run = kdrun(workdir, "report", str(sweep_dir), str(baseline_dir))
    assert run.returncode == 0, run.stderr
    [combined] = (workdir / "outputs" / "report").iterdir()  # two sweeps: a report of their own
    rows = {row["T"]: row for row in csv.DictReader((combined / "report.csv").open()) if row["role"] == "distill"}
    baseline = [summary(d)["test_acc"] for d in run_dirs(workdir, "train_student")]
    for T in (1.0, 4.0):
        accs = [summary(d)["test_acc"] for d in run_dirs(workdir, "distill") if summary(d)["T"] == T]
        row = next(r for key, r in rows.items() if float(key) == T)
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.mean(accs))
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs))
        assert float(row["gain"]) == pytest.approx(statistics.mean(accs) - statistics.mean(baseline))
    assert (sweep_dir / "acc_vs_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
