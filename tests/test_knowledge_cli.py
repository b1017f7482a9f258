"""The knowledge features end to end: inspect-teacher's files, teacher snapshots and smoothing,
loss variants and label noise through the CLI, the presets, and one-line config errors."""

import json

import pytest
from conftest import FAST, kdrun, run_dirs, summary
from hydra import compose, initialize_config_dir

from kdrun.report import build_report
from kdrun.run.config import config_dir, register_schemas

PNG = b"\x89PNG\r\n\x1a\n"


def test_inspect_teacher_writes_valid_pngs_and_json_and_report_leaves_it_out(workdir):
    run = kdrun(workdir, "inspect-teacher", *FAST, "temperatures=[1,4,10]", "matrix_T=4", "examples=3")
    assert run.returncode == 0, run.stderr
    [job] = run_dirs(workdir, "inspect_teacher")
    for name in ("dark_knowledge.png", "class_relationships.png", "true_class_prob.png"):
        assert (job / name).read_bytes()[:8] == PNG, name
    knowledge = json.loads((job / "knowledge.json").read_text())
    assert set(knowledge["test_by_temperature"]) == {"1", "4", "10"}
    assert knowledge["ece_bins"] == 15 and 0 <= knowledge["test_acc"] <= 1
    for stats in knowledge["test_by_temperature"].values():
        assert 0 <= stats["ece"] <= 1 and stats["mean_entropy"] >= 0
    matrix = knowledge["class_matrix"]
    assert len(matrix) == 10 and all(sum(row) == pytest.approx(1, abs=1e-5) for row in matrix)
    assert summary(job)["command"] == "inspect_teacher"
    with pytest.raises(Exception, match="only 1 inspect-teacher"):
        build_report([workdir / "outputs"])


def test_distill_variants_snapshot_teacher_noise_and_probe(workdir):
    """One sweep: dkd and kd_sim from the teacher's epoch-1 snapshot of a 2-epoch, label-smoothed recipe, on noisy labels."""
    run = kdrun(workdir, "distill", "-m", *FAST, "teacher.train.epochs=2", "teacher_epoch=1",
                "teacher.train.label_smoothing=0.1", "dataset.label_noise=0.25", "epochs=2", "loss=dkd,kd_sim")
    assert run.returncode == 0, run.stderr
    jobs = run_dirs(workdir, "distill")
    assert sorted(summary(j)["loss"] for j in jobs) == ["dkd", "kd_sim"]
    stored = sorted((p.name for p in (workdir / "outputs" / "teachers").glob("*.pt")), key=len)
    assert len(stored) == 2 and stored[1] == stored[0].replace(".pt", "-e1.pt"), stored
    assert {summary(j)["teacher"]["checkpoint"].endswith("-e1.pt") for j in jobs} == {True}
    logs = "".join((j / "distill.log").read_text() for j in jobs)
    assert logs.count("Training teacher") == 1 and "label noise: 128 of 512" in logs
    for job in jobs:
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert all(-1 <= row["grad_ratio_corr"] <= 1 for row in rows)


def test_a_full_teacher_without_the_snapshot_is_trained_again(workdir):
    assert kdrun(workdir, "train-teacher", *FAST, "epochs=2").returncode == 0
    run = kdrun(workdir, "distill", *FAST, "teacher.train.epochs=2", "teacher_epoch=1", "epochs=1", "probe=false")
    assert run.returncode == 0, run.stderr
    [job] = run_dirs(workdir, "distill")
    assert "has no snapshot after epoch 1" in (job / "distill.log").read_text()
    assert "grad_ratio_corr" not in (job / "metrics.jsonl").read_text()


@pytest.mark.parametrize("override,message", [
    ("loss=ls loss.epsilon=1.0", "loss.epsilon must be in [0, 1)"),
    ("loss.epsilon=0.1", "unknown key 'loss.epsilon' for this command; valid keys under 'loss': name, logit_std"),
    ("loss=dkd loss.beta=-1", "loss.beta must be >= 0"),
    ("loss=softmax", "unknown loss 'softmax'"),
    ("loss.name=softmax", "unknown loss 'softmax'"),
    ("dataset.label_noise=1", "dataset.label_noise must be in [0, 1)"),
    ("teacher_epoch=31", "teacher_epoch must be in [1, teacher.train.epochs=30]"),
    ("teacher.train.label_smoothing=-0.1", "teacher.train.label_smoothing must be in [0, 1)"),
])
def test_bad_knowledge_values_are_one_line_errors(workdir, override, message):
    run = kdrun(workdir, "distill", *override.split())
    assert run.returncode == 2
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.parametrize("preset,params", [
    ("knowledge_levels", {"loss": "ce,ls,kd_pt,kd_sim,kd", "seed": "0,1,2"}),
    ("label_noise", {"dataset.label_noise": "0,0.2,0.4", "loss": "ce,kd", "seed": "0,1,2"}),
])
def test_knowledge_presets_compose_as_mnist1d_sweeps(preset, params):
    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("distill", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert (cfg.dataset.name, cfg.teacher.name, cfg.student.name, cfg.loss.name) == ("mnist1d", "cnn1d", "mlp", "kd")
    assert {k: str(v) for k, v in cfg.hydra.sweeper.params.items()} == params
