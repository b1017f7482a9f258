"""`kdrun reproduce ROW`: a published row (preset + method) run over its seeds, compared with the paper's number."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml
from conftest import kdrun, summary

from kdrun.report.published import PUBLISHED, published_rows
from kdrun.run.config import config_dir

TINY_CIFAR = ["dataset=fake", "dataset.kwargs.shape=[3,16,16]", "dataset.kwargs.num_classes=100",
              "dataset.kwargs.num_train=32", "dataset.kwargs.num_test=16", "epochs=1", "teacher.train.epochs=1",
              "progress=false", "latency.min_seconds=0.01", "latency.batch_size=4", "threads=1"]


def test_every_published_row_is_a_preset_and_a_method_with_a_cited_source():
    data = yaml.safe_load(PUBLISHED.read_text())
    losses = {p.stem for p in (config_dir() / "loss").glob("*.yaml")}
    assert len(published_rows()) >= 50
    for row in published_rows().values():
        assert (config_dir() / "experiment" / f"{row.experiment}.yaml").is_file(), row.name
        assert row.method in losses, row.name
        for number in (row.teacher, row.student, row.distilled):
            assert number.source in data["sources"] and 0 < number.value < 100, row.name
    # a method the authors tuned per pair has its settings beside the preset (mdistiller's DKD beta, MLKD's lr)
    for name in ("cifar100_resnet110_resnet32-dkd", "cifar100_resnet50_mobilenetv2-dkd", "cifar100_vgg13_mobilenetv2-mlkd"):
        assert name in published_rows() and (config_dir() / "experiment_loss" / f"{name}.yaml").is_file()


def test_a_row_runs_its_seeds_and_baseline_as_real_sweeps_and_ends_in_the_comparison(workdir):
    result = kdrun(workdir, "reproduce", "cifar100_resnet56_resnet20-kd", "seeds=2", "baseline=true", *TINY_CIFAR)
    assert result.returncode == 0, result.stderr
    [out] = (workdir / "outputs" / "reproduce" / "cifar100_resnet56_resnet20-kd").iterdir()
    compared = json.loads((out / "reproduce.json").read_text())
    assert compared["published"]["kd"]["top1"] == 70.66 and compared["published"]["student"]["top1"] == 69.06
    assert compared["recipe_epochs"] == 240
    for verb, key in (("distill", "kd"), ("baseline", "student")):
        runs = [summary(p.parent) for p in (out / verb).glob("*/summary.json")]
        assert sorted(s["seed"] for s in runs) == [0, 1] and {s["epochs"] for s in runs} == {1}
        ours = compared["kdrun"][key]
        assert ours["seeds"] == [0, 1] and ours["runs"] == 2
        assert ours["best"]["mean"] == pytest.approx(100 * statistics.fmean(s["best_test_acc"] for s in runs))
        assert ours["final"]["mean"] == pytest.approx(100 * statistics.fmean(s["test_acc"] for s in runs))
    assert {s["model"] for s in [summary(p.parent) for p in (out / "baseline").glob("*/summary.json")]} == {"resnet20"}
    table = (out / "reproduce.md").read_text()
    assert "| kd | 70.66 |" in table and "1 of 240 epochs: SHORT" in table and "Contrastive Representation" in table


@pytest.mark.parametrize("args, message", [
    (["cifar100_resnet56"], "no published row 'cifar100_resnet56'"),
    (["cifar100_resnet56_resnet20-kd", "seeds=0"], "seeds=0: give a count"),
    (["cifar100_resnet56_resnet20-kd", "loss=dkd"], "reproduce sets loss itself"),
    (["cifar100_resnet56_resnet20-kd", "epochs"], "'epochs' is not KEY=VALUE"),
])
def test_bad_input_is_one_line_and_leaves_nothing(workdir, args, message):
    result = kdrun(workdir, "reproduce", *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (workdir / "outputs").exists()


def test_a_row_whose_runs_fail_says_so_and_writes_no_comparison(workdir):
    """CIFAR-100 is not on disk (and download=false): every run fails with the dataset's own line."""
    result = kdrun(workdir, "reproduce", "cifar100_resnet56_resnet20-kd", "seeds=1", f"dataset.data_dir={workdir}",
                   "progress=false")
    assert result.returncode != 0 and "cifar" in result.stderr.lower() and "Traceback" not in result.stderr
    assert not list((workdir / "outputs" / "reproduce").glob("*/*/reproduce.md"))


def test_ctrl_c_stops_the_row_with_130_and_says_where_its_runs_are(workdir):
    import os
    import signal
    import subprocess
    import sys

    from conftest import wait_until

    env = {**os.environ, "KDRUN_TEST": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # its own process group, SIGINT at its default: as a terminal's Ctrl-C reaches reproduce and its sweep alike
    row = subprocess.Popen([sys.executable, "-m", "kdrun", "reproduce", "cifar100_resnet56_resnet20-kd", "seeds=1",
                            "baseline=true", *TINY_CIFAR, "epochs=500"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until(lambda: list((workdir / "outputs" / "reproduce").glob("*/*/distill/*/metrics.jsonl")), row)
    os.killpg(row.pid, signal.SIGINT)
    _, err = row.communicate(timeout=600)
    assert row.returncode == 130 and "Traceback" not in err, err
    [out] = (workdir / "outputs" / "reproduce" / "cifar100_resnet56_resnet20-kd").iterdir()
    sweep = out.relative_to(workdir) / "distill"
    assert f"the runs so far are in {sweep}" in err and f"kdrun distill resume={sweep}`" in err
    assert not (out / "baseline").exists() and not (out / "reproduce.json").exists()
