"""Every method through the engine on each CIFAR pair family (and across families), and through the CLI."""

import json

import pytest
import torch
from conftest import FAST, kdrun, run_dirs, summary

from kdrun.data import load_dataset
from kdrun.methods.base import MethodContext, build_method, registered
from kdrun.methods.pairs import methods_for
from kdrun.models import build_model
from kdrun.train.engine import fit
from kdrun.train.recipe import Recipe

FEATURE_METHODS = ["fitnet", "at", "rkd", "pkt", "crd", "reviewkd"]
PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("vgg13", "vgg8"),
         ("resnet32x4", "shufflenetv2"), ("vgg13", "mobilenetv2"), ("tv_resnet18", "resnet8x4")]


@pytest.mark.parametrize("teacher_name,student_name", PAIRS, ids=[f"{t}-{s}" for t, s in PAIRS])
def test_every_feature_method_trains_a_step_on_each_cifar_family(teacher_name, student_name):
    """Stage shapes differ across families (channels, spatial sizes, stage counts): connectors must bridge them."""
    torch.set_num_threads(1)
    data = load_dataset("fake", "/unused", False, False,
                        {"shape": [3, 32, 32], "num_classes": 100, "num_train": 8, "num_test": 2})
    torch.manual_seed(0)
    teacher = build_model(teacher_name, 100, (3, 32, 32), {})
    student = build_model(student_name, 100, (3, 32, 32), {})
    for name in FEATURE_METHODS:
        context = MethodContext(4.0, 0.9, 100, 8, student, teacher, data.x_train[:2], data.y_train)
        method = build_method({"name": name, "kd_weight": 1.0}, context)
        before = [p.detach().clone() for p in method.parameters()]
        [row] = fit(student, data, Recipe(epochs=1, batch_size=8), torch.device("cpu"), loss=method, teacher=teacher)
        assert torch.isfinite(torch.tensor([row["train_loss"], row["kd"]])).all() and row["kd"] > 0, name
        assert all(not torch.equal(a, p) for a, p in zip(before, method.parameters())), f"{name}: parts not trained"


def test_every_method_runs_through_the_cli_with_a_validation_split(workdir):
    """Every method the pair pre-check allows for two CNNs (deit needs a ViT student with a distillation token)."""
    allowed = methods_for("cnn1d", "cnn1d_small")
    assert set(registered()) - set(allowed) == {"deit"}
    methods = ",".join(allowed)
    run = kdrun(workdir, "distill", "-m", *FAST, "student=cnn1d_small", "epochs=2", "dataset.val_split=0.25",
                "probe=false", "latency.min_reps=5", f"loss={methods}")
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = run_dirs(workdir, "distill")
    assert sorted(summary(job)["loss"] for job in jobs) == sorted(allowed)
    for job in jobs:
        s = summary(job)
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        best = max(rows, key=lambda r: r["val_acc"])
        assert (s["best_val_epoch"], s["test_acc_at_best_val"]) == (best["epoch"], best["test_acc"]), s["loss"]
        assert s["best_test_acc"] == max(r["test_acc"] for r in rows)
        state = torch.load(job / "checkpoint.pt", weights_only=True)
        assert bool(state.get("method_state")) == (s["loss"] in ("fitnet", "crd", "reviewkd", "ofa")), s["loss"]
    [report] = workdir.glob("outputs/distill-sweep/*/report.md")
    assert "acc at best val %" in report.read_text()


def test_the_preset_sweep_is_one_command_with_the_per_pair_settings(workdir):
    run = kdrun(workdir, "distill", "-m", "experiment=cifar100_resnet56_resnet20", "loss=kd,fitnet,at,crd,reviewkd,dkd",
                "seed=0", "dataset=fake", "dataset.kwargs.shape=[3,32,32]", "dataset.kwargs.num_classes=100",
                "dataset.kwargs.num_train=20", "dataset.kwargs.num_test=4", "epochs=1", "teacher.train.epochs=1",
                "progress=false", "probe=false", "latency.min_seconds=0.01", "latency.min_reps=3",
                "latency.batch_size=2", "threads=1")
    assert run.returncode == 0, run.stderr[-3000:]
    by_loss = {summary(job)["loss"]: summary(job) for job in run_dirs(workdir, "distill")}
    assert set(by_loss) == {"kd", "fitnet", "at", "crd", "reviewkd", "dkd"}
    assert (by_loss["dkd"]["loss_options"]["beta"], by_loss["dkd"]["loss_options"]["warmup"]) == (2.0, 20)
    assert all("test_acc_at_best_val" in s for s in by_loss.values()), "presets hold out a validation split"
    assert len(list(workdir.glob("outputs/distill-sweep/*/report.csv"))) == 1
