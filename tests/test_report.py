"""`kdrun report`: numbers that match the summaries, the files it writes, and the sweep callback."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD
from matplotlib.image import imread
from omegaconf import OmegaConf
from PIL import Image

from kdrun.cli import main as cli
from kdrun.report import build_report
from kdrun.sweep.callbacks import ReportCallback

WORKTREE = Path(__file__).resolve().parent.parent
TEACHER_MS, TEACHER_ACC = 0.30, 0.91
TEMPERATURES, ALPHAS, SEEDS = (1.0, 4.0), (0.5, 0.9), (0, 1)
BASELINE_ACC = {0: 0.55, 1: 0.58}


def student_acc(T: float, alpha: float, seed: int) -> float:
    """Distinct, irregular accuracies so a wrong grouping cannot produce the right numbers."""
    return round(0.60 + 0.05 * math.log2(T) + 0.07 * alpha + 0.013 * seed + 0.004 * seed * T, 6)


def student_ms(seed: int) -> float:
    return 0.020 + 0.002 * seed


def write_run(job: Path, command: str, seed: int, test_acc: float, hydra: bool = True, epochs: int = 3,
              **kd: float) -> Path:
    """A finished job as kdrun writes it: summary.json, and .hydra/ with its overrides and config."""
    latency = {"batch1_ms_median": student_ms(seed), "batch1_ms_p90": 2 * student_ms(seed),
               "throughput_per_s": 1e5, "batch_size": 256, "device": "cpu", "threads": 1}
    summary = {"command": command, "dataset": "fake", "model": "mlp", "seed": seed, "epochs": epochs,
               "test_acc": test_acc, "best_test_acc": test_acc + 0.01 * (seed + 1), "best_epoch": 2,
               "params": 418, "flops": 800, "latency": latency, "run_dir": str(job)}
    config = {"command": command, "seed": seed, "epochs": epochs, "dataset": {"name": "fake", "kwargs": {}},
              "student": {"name": "mlp", "kwargs": {"hidden": [8]}}, "optim": {"name": "adamw", "lr": 0.005}}
    if kd:
        teacher_latency = {**latency, "batch1_ms_median": TEACHER_MS}
        summary |= {**kd, "teacher": {"model": "cnn1d", "test_acc": TEACHER_ACC, "params": 45066,
                                      "latency": teacher_latency, "checkpoint": "teacher.pt"},
                    "speedup": TEACHER_MS / student_ms(seed)}
        config |= {"T": 4.0, "alpha": 0.9, "teacher": {"name": "cnn1d"}, **kd}
    job.mkdir(parents=True)
    (job / "summary.json").write_text(json.dumps(summary))
    if hydra:
        overrides = [f"{key}={value:g}" for key, value in kd.items()] + [f"seed={seed}", f"epochs={epochs}"]
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
        (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return job


def write_unfinished(job: Path) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(["T=8", "seed=0"]))
    (job / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.1}) + "\n")


def make_sweeps(root: Path, hydra: bool = True) -> tuple[Path, Path]:
    """2 T x 2 alpha x 2 seeds of distill, a 2-seed baseline, and one unfinished distill job."""
    sweep, baseline = root / "distill-sweep", root / "train_student-sweep"
    grid = [(T, alpha, seed) for T in TEMPERATURES for alpha in ALPHAS for seed in SEEDS]
    for job, (T, alpha, seed) in enumerate(grid):
        write_run(sweep / str(job), "distill", seed, student_acc(T, alpha, seed), hydra, T=T, alpha=alpha)
    for seed in SEEDS:
        write_run(baseline / str(seed), "train_student", seed, BASELINE_ACC[seed], hydra)
    write_unfinished(sweep / str(len(grid)))
    return sweep, baseline


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def sample_std(values: list[float]) -> float:
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def expected_rows() -> dict[tuple[str, str], dict[str, float]]:
    """Per (T, alpha): the numbers the report must show, computed here from the inputs."""
    baseline = mean(list(BASELINE_ACC.values()))
    rows = {}
    for T in TEMPERATURES:
        for alpha in ALPHAS:
            final = [student_acc(T, alpha, s) for s in SEEDS]
            best = [acc + 0.01 * (s + 1) for acc, s in zip(final, SEEDS)]
            rows[(f"{T:g}", f"{alpha:g}")] = {
                "test_acc_mean": mean(final), "test_acc_std": sample_std(final), "best_test_acc_mean": mean(best),
                "best_test_acc_std": sample_std(best), "gain": mean(final) - baseline,
                "batch1_ms": mean([student_ms(s) for s in SEEDS]),
                "speedup": mean([TEACHER_MS / student_ms(s) for s in SEEDS])}
    return rows


def test_cli_writes_table_csv_markdown_and_plots_with_the_summaries_numbers(tmp_path):
    sweep, baseline = make_sweeps(tmp_path)
    code = ("import sys; from kdrun.cli import main; code = main(sys.argv[1:]); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, "report", str(sweep), str(baseline)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(WORKTREE), "COLUMNS": "200"}, timeout=HANG_GUARD,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # two sweeps make a report of their own: neither sweep's own report is overwritten by the mixed one
    [out] = (tmp_path / "outputs" / "report").iterdir()
    assert not (sweep / "report.csv").exists() and not (baseline / "report.csv").exists()
    assert "job 8 unfinished: no summary.json" in run.stdout
    assert "torch imported: False" in run.stdout, "a report must not pay for importing torch"
    assert "kdrun report: 10 run(s) in 5 row(s)" in run.stdout

    with open(out / "report.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["role"] for r in records] == ["baseline"] + ["distill"] * 4
    assert float(records[0]["test_acc_mean"]) == pytest.approx(mean(list(BASELINE_ACC.values())))
    assert float(records[0]["test_acc_std"]) == pytest.approx(sample_std(list(BASELINE_ACC.values())))
    expected = expected_rows()
    assert {(r["T"], r["alpha"]) for r in records[1:]} == set(expected)
    for record in records[1:]:
        want = expected[(record["T"], record["alpha"])]
        assert record["seeds"] == "2"
        assert float(record["teacher_test_acc"]) == pytest.approx(TEACHER_ACC)
        for key, value in want.items():
            assert float(record[key]) == pytest.approx(value, rel=1e-9), key

    lines = (out / "report.md").read_text().splitlines()
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    header, separator, body = table[0], table[1], table[2:]
    assert header[:6] == ["role", "model", "dataset", "T", "alpha", "seeds"] and set(separator) == {"---"}
    assert len(body) == 5 and all(len(row) == len(header) for row in body)
    for row in body[1:]:
        cells, want = dict(zip(header, row)), expected[(row[3], row[4])]
        assert cells["final acc %"] == f"{100 * want['test_acc_mean']:.2f} ± {100 * want['test_acc_std']:.2f}"
        assert cells["gain (pp)"] == f"{100 * want['gain']:+.2f}"
        assert cells["teacher acc %"] == f"{100 * TEACHER_ACC:.2f}"

    for name in ("acc_vs_T.png", "acc_vs_latency.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        assert imread(path).shape[0] > 100


def test_swept_keys_fall_back_to_summary_fields_without_hydra_dirs(tmp_path):
    sweep, baseline = make_sweeps(tmp_path, hydra=False)
    report = build_report([sweep, baseline])
    assert report.keys == ["T", "alpha"]
    distill = [row for row in report.rows if row.command == "distill"]
    expected = expected_rows()
    for row in distill:
        want = expected[(row.setting["T"], row.setting["alpha"])]
        assert row.stat("test_acc").mean == pytest.approx(want["test_acc_mean"])
        assert row.gain == pytest.approx(want["gain"])
    assert "job 8 unfinished: no summary.json" in " ".join(report.notes)


def test_a_key_left_at_its_default_in_one_sweep_still_separates_rows(tmp_path):
    write_run(tmp_path / "a" / "0", "distill", 0, 0.7, T=2.0)  # alpha not overridden: config default 0.9
    write_run(tmp_path / "b" / "0", "distill", 0, 0.6, T=2.0, alpha=0.5)
    report = build_report([tmp_path / "a", tmp_path / "b"])
    assert report.keys == ["alpha"]
    assert [(row.setting, row.stat("test_acc").mean) for row in report.rows] == [({"alpha": "0.5"}, 0.6),
                                                                                 ({"alpha": "0.9"}, 0.7)]


def test_alpha_zero_inside_a_distill_sweep_is_the_baseline(tmp_path):
    write_run(tmp_path / "0", "distill", 0, 0.61, alpha=0.0)
    write_run(tmp_path / "1", "distill", 0, 0.64, alpha=0.9)
    report = build_report([tmp_path])
    assert [(row.role, row.gain) for row in report.rows] == [("baseline", None), ("distill", pytest.approx(0.03))]


def test_a_baseline_with_another_recipe_gives_no_gain_and_says_so(tmp_path):
    write_run(tmp_path / "kd", "distill", 0, 0.7, T=2.0, alpha=0.9)
    write_run(tmp_path / "plain", "train_student", 0, 0.6, epochs=50)
    report = build_report([tmp_path])
    assert [row.gain for row in report.rows] == [None, None]
    assert any("no gain for 1 distill row(s)" in note for note in report.notes)


@pytest.mark.parametrize("args, message", [
    (["report"], "report: the following arguments are required: PATH"),
    (["report", "some_dir", "--bogus"], "report: unrecognized arguments: --bogus"),
    (["export"], "export: the following arguments are required: RUN_DIR"),
    (["evaluate", "model.onnx", "--bogus"], "evaluate: unrecognized arguments: --bogus"),
])
def test_a_wrong_command_line_of_a_path_command_is_one_line_with_exit_code_2(capsys, args, message):
    assert cli(args) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and f"usage: kdrun {args[0]} [-h]" in error


def test_no_runs_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    assert cli(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kdrun: error: no finished runs (summary.json) under") and error.count("\n") == 1
    assert cli(["report", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_callback_on_a_sweep_whose_runs_all_failed_names_them_and_exits_2(tmp_path, capsys):
    for job in ("0", "1"):
        write_unfinished(tmp_path / job)
        (tmp_path / job / "status.json").write_text(json.dumps({"status": "failed", "error": f"boom {job}"}))
    with pytest.raises(SystemExit) as stop:
        ReportCallback().on_multirun_end(OmegaConf.create({"command": "distill",
                                                           "hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and "no report for this sweep" in captured.out
    assert "job 0 failed: boom 0; job 1 failed: boom 1" in captured.out
    assert captured.err.count("\n") == 1 and "2 job(s) of this sweep did not finish" in captured.err
    assert "fix the cause of job 0, 1, then run it with" in captured.err
    assert f"kdrun distill resume={tmp_path}" in captured.err
    assert not (tmp_path / "report.csv").exists()


def test_a_real_sweep_ends_with_its_report(tmp_path):
    args = ["distill", "-m", "T=1,2", "epochs=1", "dataset=fake", "teacher.train.epochs=1", "progress=false",
            "student.kwargs.hidden=[8]", "latency.min_reps=5", "latency.min_seconds=0.01", "latency.batch_size=16"]
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    run = subprocess.run([sys.executable, "-m", "kdrun", *args], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr
    [sweep] = (tmp_path / "outputs" / "distill-sweep").iterdir()
    with open(sweep / "report.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    summaries = {json.loads((sweep / job / "summary.json").read_text())["T"]: job for job in ("0", "1")}
    assert [r["T"] for r in records] == ["1", "2"] and set(summaries) == {1.0, 2.0}
    for record in records:
        summary = json.loads((sweep / summaries[float(record["T"])] / "summary.json").read_text())
        assert float(record["test_acc_mean"]) == summary["test_acc"] and record["test_acc_std"] == ""
        assert float(record["speedup"]) == pytest.approx(summary["speedup"])
    assert (sweep / "acc_vs_T.png").is_file() and f"wrote {sweep / 'report.csv'}" in run.stdout


def test_labels_of_points_at_one_place_are_moved_apart():
    """A sweep's students share one latency and nearly one accuracy: their labels must not print on each other."""
    from kdrun.report.plots import label_points, latency_axis, new_axes

    figure, axes = new_axes()
    points = [(f"distill mlp T={t} alpha={a}", 0.027, 62 + 0.3 * i) for i, (t, a) in
              enumerate((t, a) for t in (1, 2, 4, 8) for a in (0.5, 0.9))] + [("teacher cnn1d", 0.17, 97.0)]
    axes.plot([x for _, x, _ in points], [y for _, _, y in points], "o")
    latency_axis(axes, "ms", "%", "labels")
    label_points(axes, points)
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in axes.texts]
    assert len(boxes) == len(points)
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert not overlapping, f"{len(overlapping)} pairs of labels overlap"
