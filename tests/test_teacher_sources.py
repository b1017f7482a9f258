"""Teachers people already have: the peers' checkpoint formats, pretrained torchvision weights, and
a model of one's own, each loaded through the CLI and scored on the test set as the same weights
score when evaluated directly."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import FAST, HANG_GUARD, kdrun, run_dirs, summary
from omegaconf import OmegaConf
from test_bad_input import Evil
from test_vision_data import write_cifar10

from kdrun.core.errors import KdrunError
from kdrun.data import load_dataset
from kdrun.models import build_model, build_pretrained
from kdrun.models.checkpoint import file_sha256, read_weights, save_checkpoint
from kdrun.teachers.store import load_teacher
from kdrun.train.evaluate import evaluate, predict

BASE = [a for a in FAST if not a.startswith("teacher.")]  # fake data, one thread, short latency timing
QUICK = ["epochs=1", "progress=false", "probe=false", "threads=1", "latency.min_seconds=0.01", "latency.batch_size=16",
         "latency.min_reps=5", "student=resnet8", "optim.batch_size=50"]
# The CLI with one change: torchvision's md5 check of the CIFAR files, which files written here cannot
# pass, becomes its own existence-only check (as tests/test_vision_data.py's `no_md5` does in-process).
NO_MD5_CLI = ("import torchvision.datasets.cifar as cifar, torchvision.datasets.utils as utils\n"
              "cifar.check_integrity = lambda path, md5=None: utils.check_integrity(path)\n"
              "from kdrun.cli import main\nraise SystemExit(main())\n")

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_looking_resnet8(num_classes: int = 10) -> torch.nn.Module:
    """Random weights with varied batch-norm statistics, so predictions differ from class to class."""
    torch.manual_seed(1)
    model = build_model("resnet8", num_classes, (3, 32, 32), {})
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def peer_files(folder: Path, model: torch.nn.Module) -> dict[str, Path]:
    """The same weights in every layout kdrun reads, as the peers' own code writes them."""
    state = model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    model.load_state_dict(state)
    opt = argparse.Namespace(model="resnet8", dataset="cifar10", learning_rate=0.05, lr_decay_epochs=[150, 180, 210])
    distiller = {**{f"module.student.{k}": v for k, v in state.items()}, "module.teacher.fc.weight": torch.zeros(3)}
    layouts = {
        # RepDistiller train_teacher.py: every save_freq epochs, and at the end with its argparse options.
        "repdistiller/ckpt_epoch_240.pth": {"epoch": 240, "model": state, "accuracy": torch.tensor(71.5),
                                            "optimizer": optimizer.state_dict()},
        "repdistiller/resnet8_last.pth": {"opt": opt, "model": state, "optimizer": optimizer.state_dict()},
        # mdistiller's trainer: the student alone, and the whole (DataParallel) distiller.
        "mdistiller/student_best": {"model": state},
        "mdistiller/epoch_240": {"epoch": 240, "model": distiller, "optimizer": optimizer.state_dict(),
                                 "best_acc": 70.1},
        "plain/state_dict.pt": state,
        "plain/wrapped.pt": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }
    paths = {}
    for name, payload in layouts.items():
        paths[name] = folder / name
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, paths[name])
    paths["kdrun/checkpoint.pt"] = folder / "kdrun" / "checkpoint.pt"
    paths["kdrun/checkpoint.pt"].parent.mkdir()
    save_checkpoint(paths["kdrun/checkpoint.pt"], model, arch="resnet8", arch_kwargs={}, num_classes=10,
                    input_shape=(3, 32, 32), dataset="cifar10", config={}, metrics={})
    return paths


FORMATS = {"repdistiller/ckpt_epoch_240.pth": "repdistiller", "repdistiller/resnet8_last.pth": "repdistiller",
           "mdistiller/student_best": "mdistiller", "mdistiller/epoch_240": "mdistiller",
           "plain/state_dict.pt": "state_dict", "plain/wrapped.pt": "state_dict", "kdrun/checkpoint.pt": "kdrun"}


THROUGH_THE_CLI = ("repdistiller/ckpt_epoch_240.pth", "mdistiller/epoch_240", "plain/wrapped.pt", "kdrun/checkpoint.pt")


def test_every_format_loads_through_the_cli_and_scores_as_the_weights_do(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    write_cifar10(data_dir / "cifar10", per_batch=20, num_test=300, rng=np.random.default_rng(0))
    model = trained_looking_resnet8()
    files = peer_files(tmp_path / "ckpts", model)
    for name, path in files.items():  # every layout gives the same weights; one file per format goes through the CLI
        weights = read_weights(path)
        assert weights.format == FORMATS[name] and weights.state_dict.keys() == model.state_dict().keys(), name
        assert all(torch.equal(weights.state_dict[k], v) for k, v in model.state_dict().items()), name
    files = {name: files[name] for name in THROUGH_THE_CLI}
    script = tmp_path / "kdrun_no_md5.py"
    script.write_text(NO_MD5_CLI)
    env = {**os.environ, "KDRUN_TEST": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    run = subprocess.run([sys.executable, str(script), "distill", "-m", *QUICK, "dataset=cifar10",
                          f"dataset.data_dir={data_dir}", "dataset.augment=false", "teacher=resnet56",
                          "teacher.name=resnet8", "teacher.train_if_missing=false", "~hydra.callbacks.report",
                          f"teacher.checkpoint={','.join(str(p) for p in files.values())}"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr[-3000:]

    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.utils as utils
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: utils.check_integrity(path))
    data = load_dataset("cifar10", str(data_dir), False, False, {})
    direct = evaluate(model, data, torch.device("cpu"))
    assert len(predict(model, data.x_test).argmax(1).unique()) > 1  # weights that tell classes apart
    teachers = {Path(summary(d)["teacher"]["checkpoint"]): summary(d)["teacher"] for d in run_dirs(tmp_path, "distill")}
    assert len(teachers) == len(files)
    for name, path in files.items():
        teacher = teachers[path]
        assert (teacher["checkpoint_format"], teacher["test_acc"]) == (FORMATS[name], direct), name
        assert teacher["checkpoint_sha256"] == file_sha256(path)
    assert "Training teacher" not in run.stdout + run.stderr


def test_the_peers_metadata_is_checked_in_one_line(tmp_path):
    model = trained_looking_resnet8()
    files = peer_files(tmp_path, model)
    weights = read_weights(files["repdistiller/resnet8_last.pth"])
    assert (weights.format, weights.arch, weights.dataset) == ("repdistiller", "resnet8", "cifar10")
    assert read_weights(files["repdistiller/ckpt_epoch_240.pth"]).metrics == {"epoch": 240.0, "accuracy": 71.5}
    student_last = tmp_path / "resnet8_last.pth"  # RepDistiller's train_student.py names the model model_s
    torch.save({"opt": argparse.Namespace(model_s="MobileNetV2", dataset="cifar100"), "model": model.state_dict()},
               student_last)
    assert read_weights(student_last).arch == "mobilenetv2"
    assert set(read_weights(files["mdistiller/epoch_240"]).state_dict) == set(model.state_dict())
    run = kdrun(tmp_path, "distill", *BASE, *QUICK, "teacher=resnet56", "teacher.name=resnet8",
                "dataset.kwargs.shape=[3,32,32]", f"teacher.checkpoint={files['repdistiller/resnet8_last.pth']}")
    errors = [line for line in run.stderr.splitlines() if line.startswith("kdrun: error:")]
    assert run.returncode != 0 and len(errors) == 1, run.stderr[-2000:]
    assert "was trained on 'cifar10' but dataset=fake" in errors[0]
    data = load_dataset("fake", str(tmp_path), False, False, {"shape": [3, 32, 32], "num_train": 8, "num_test": 8})
    teacher = OmegaConf.create({"name": "resnet14", "kwargs": {}})
    with pytest.raises(KdrunError, match="holds a 'resnet8' but teacher=resnet14"):
        load_teacher(files["repdistiller/resnet8_last.pth"], teacher, data, "cpu")


def test_a_state_dict_that_does_not_fit_names_what_differs(tmp_path):
    from kdrun.models.checkpoint import load_weights

    state = build_model("resnet8", 100, (3, 32, 32), {}).state_dict()
    with pytest.raises(KdrunError, match=r"fc.weight is \(100, 64\) in the file but \(10, 64\) in the model"):
        load_weights(build_model("resnet8", 10, (3, 32, 32), {}), state, "x.pt")
    with pytest.raises(KdrunError, match=r"missing keys .*; unexpected keys block1.layer.0.bn1.weight") as error:
        load_weights(build_model("resnet8", 100, (3, 32, 32), {}), build_model("wrn_16_1", 100, (3, 32, 32), {})
                     .state_dict(), "x.pt")
    assert "\n" not in str(error.value)


CRAFTED = {
    "repdistiller": lambda evil: {"epoch": 1, "model": {"w": torch.zeros(1)}, "opt": evil},
    "repdistiller, inside the Namespace": lambda evil: {"model": {"w": torch.zeros(1)},
                                                        "opt": argparse.Namespace(model=evil)},
    "mdistiller": lambda evil: {"model": {"module.student.w": torch.zeros(1)}, "best_acc": evil},
    "state_dict": lambda evil: {"w": torch.zeros(1), "x": evil},
    "wrapped state_dict": lambda evil: {"state_dict": {"w": evil}},
}


@pytest.mark.parametrize("layout", CRAFTED)
def test_a_crafted_pickle_in_each_accepted_layout_runs_no_code(tmp_path, layout):
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pth"
    torch.save(CRAFTED[layout](Evil(marker)), path)
    with pytest.raises(KdrunError, match="was not loaded: unpickling it could run code"):
        read_weights(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: unpickled without weights_only, the file does run code
    assert marker.exists()


NETS = '''
from torch import nn


def build_teacher(num_classes, input_shape, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], width), nn.ReLU(),
                         nn.Linear(width, num_classes))


class Student(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], num_classes))

    def forward(self, x):
        return self.net(x)
'''


def test_custom_teacher_and_student_from_a_module_on_pythonpath(tmp_path):
    (tmp_path / "my_nets.py").write_text(NETS)
    sys.path.insert(0, str(tmp_path))
    try:
        import my_nets
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    teacher = my_nets.build_teacher(10, (1, 40), width=12)
    torch.save(teacher.state_dict(), tmp_path / "weights.pt")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = kdrun(tmp_path, "distill", *BASE, *QUICK, "teacher=custom", "teacher.target=my_nets:build_teacher",
                "+teacher.kwargs.width=12", f"teacher.checkpoint={tmp_path / 'weights.pt'}", "student=custom",
                "student.target=my_nets.Student", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    [run_dir] = run_dirs(tmp_path, "distill")
    result = summary(run_dir)
    data = load_dataset("fake", str(tmp_path), False, False, {"shape": [1, 40]})
    assert result["teacher"]["test_acc"] == evaluate(teacher.eval(), data, torch.device("cpu"))
    assert (result["model"], result["teacher"]["model"], result["teacher"]["checkpoint_format"]) == (
        "custom", "custom", "state_dict")
    student = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert student["arch_kwargs"] == {"target": "my_nets.Student"}


def test_pretrained_torchvision_weights_from_the_hub_cache(tmp_path):
    """A file placed where torch.hub keeps it: nothing is downloaded, nothing is trained."""
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cache.parent.mkdir(parents=True)
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small().eval()
    torch.save(reference.state_dict(), cache)
    dataset = ["dataset.kwargs.shape=[3,32,32]", "dataset.kwargs.num_classes=1000", "dataset.kwargs.num_train=64",
               "dataset.kwargs.num_test=64"]
    run = kdrun(tmp_path, "distill", *BASE, *QUICK, *dataset, "teacher=tv", "teacher.name=tv_mobilenet_v3_small",
                "teacher.weights=IMAGENET1K_V1", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert run.returncode == 0, run.stderr[-2000:]
    teacher = summary(run_dirs(tmp_path, "distill")[0])["teacher"]
    data = load_dataset("fake", str(tmp_path), False, False, {"shape": [3, 32, 32], "num_classes": 1000,
                                                               "num_train": 64, "num_test": 64})
    assert teacher["test_acc"] == evaluate(reference, data, torch.device("cpu"))
    assert (teacher["checkpoint"], teacher["checkpoint_format"], teacher["weights"]) == (
        str(cache), "torchvision", "IMAGENET1K_V1")
    assert teacher["checkpoint_sha256"] == file_sha256(cache)
    with pytest.raises(KdrunError, match="predicts 1000 classes but the dataset has 10; "):
        build_pretrained("tv_mobilenet_v3_small", "IMAGENET1K_V1", 10, (3, 32, 32), {})
    with pytest.raises(KdrunError, match="tv_mobilenet_v3_small has no weights 'IMAGENET1K_V9'; choose one of: "
                                         "IMAGENET1K_V1, DEFAULT"):
        build_pretrained("tv_mobilenet_v3_small", "IMAGENET1K_V9", 1000, (3, 32, 32), {})


def test_timm_weights_from_a_local_file_through_timms_loader(tmp_path):
    import timm  # the optional extra kdrun[timm], part of `dev`
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet").eval()
    torch.save(reference.state_dict(), tmp_path / "test_resnet.pth")
    model, path, family = build_pretrained("timm_test_resnet", str(tmp_path / "test_resnet.pth"), 1000, (3, 32, 32), {})
    images = torch.randn(2, 3, 32, 32)
    assert (path, family) == (tmp_path / "test_resnet.pth", "timm")
    assert torch.equal(model.eval()(images), reference(images))
    assert build_model("timm_test_resnet", 10, (1, 28, 28), {})(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(KdrunError, match="no such file"):
        build_pretrained("timm_test_resnet", str(tmp_path / "missing.pth"), 1000, (3, 32, 32), {})
