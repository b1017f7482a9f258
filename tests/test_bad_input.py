"""Every mistake a user can make answers with one line naming the problem and the fix.

Each row runs the real CLI in a fresh directory and checks: a non-zero exit, exactly one
`kdrun: error:` line on stderr carrying the row's key phrase, no traceback, and no
`summary.json` anywhere (nothing that looks finished). Paths in braces come from the
`files` fixture: a real teacher checkpoint and deliberately broken ones.
"""

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from conftest import FAST, kdrun

STUDENT = [a for a in FAST if not a.startswith("teacher.")]

TABLE = [
    ("unknown key", ["distill", "bogus=1"], "unknown key 'bogus' for this command; valid keys: command, seed"),
    ("unknown nested key", ["distill", "optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    ("wrong type", ["distill", "epochs=many"], "invalid value for epochs"),
    ("T = 0", ["distill", "T=0"], "T must be > 0 (got 0.0)"),
    ("T < 0", ["distill", "T=-2"], "T must be > 0 (got -2.0)"),
    ("alpha > 1", ["distill", "alpha=1.5"], "alpha must be in [0, 1] (got 1.5)"),
    ("alpha < 0", ["distill", "alpha=-0.1"], "alpha must be in [0, 1] (got -0.1)"),
    ("epochs < 1", ["train-student", "epochs=0"], "epochs must be >= 1 (got 0)"),
    ("bad value in a sweep", ["distill", "-m", "T=1,0"], "T must be > 0 (got 0.0)"),
    ("unknown dataset", ["distill", "dataset=cifar1000"],
     "unknown dataset 'cifar1000'; choose one of: cifar10, cifar100, fake, fashion_mnist, image_folder, imagenet, "
     "mnist, mnist1d"),
    ("unknown student", ["train-student", "student=nope"], "unknown student 'nope'; choose one of: custom, mlp,"),
    ("unknown teacher", ["distill", "teacher=nope"], "unknown teacher 'nope'; choose one of: cnn1d,"),
    ("sweep over a key the command lacks", ["train-teacher", "-m", "T=1,2"], "unknown key 'T' for this command"),
    ("teacher of another architecture", ["distill", *FAST, "teacher.checkpoint={teacher}", "teacher.name=mlp"],
     "holds a 'cnn1d' but teacher=mlp"),
    ("teacher for another number of classes", ["distill", *FAST, "teacher.checkpoint={teacher}",
                                               "dataset.kwargs.num_classes=5"], "was trained for 10 classes but"),
    ("truncated checkpoint", ["distill", *FAST, "teacher.checkpoint={truncated}"], "is truncated, corrupt"),
    ("garbage checkpoint", ["distill", *FAST, "teacher.checkpoint={garbage}"], "is truncated, corrupt"),
    ("state_dict of another model", ["distill", *FAST, "teacher.checkpoint={plain_dict}"],
     "(state_dict format) does not fit this model (Sequential): missing keys 0.weight, 0.bias, 1.weight (+"),
    ("plain torch.save of a tensor", ["distill", *FAST, "teacher.checkpoint={plain_tensor}"],
     "is not a checkpoint kdrun can read (found a Tensor); pass kdrun's own, RepDistiller's"),
    ("RepDistiller teacher of another dataset", ["distill", *FAST, "teacher.checkpoint={peer_other_dataset}"],
     "was trained on 'cifar100' but dataset=fake; pass a teacher trained on 'fake'"),
    ("custom model without a target", ["distill", "student=custom"], "student=custom needs student.target="),
    ("custom target that cannot be imported", ["train-student", *STUDENT, "student=custom",
                                               "student.target=no_such_module:build"], "cannot import target"),
    ("pretrained weights for a zoo model", ["distill", *FAST, "teacher.weights=IMAGENET1K_V1"],
     "teacher.weights needs a tv_<name> or timm_<name> teacher (got 'cnn1d')"),
    ("missing dataset, download=false", ["train-student", *STUDENT, "dataset=mnist", "dataset.data_dir={empty}"],
     "mnist not found under"),
    ("run dir under a file", ["train-student", *STUDENT, "hydra.run.dir={a_file}/run"],
     "is a file, not a directory; pass hydra.run.dir=DIR somewhere writable"),
    ("sweep dir under a file", ["train-student", "-m", *STUDENT, "seed=0,1", "hydra.sweep.dir={a_file}/sweep"],
     "pass hydra.sweep.dir=DIR somewhere writable"),
    ("teacher store under a file", ["distill", *FAST, "teacher.store={a_file}/teachers"], "Not a directory"),
    ("NaN loss", ["train-student", *STUDENT, "epochs=2", "optim.lr=1e30"],
     "training loss became nan in epoch 1, step"),
    ("image folder without train/", ["train-student", *STUDENT, "dataset=image_folder", "dataset.data_dir={empty}"],
     "an image folder (DIR/train/<class>/<image>) not found or empty under"),
    ("negative DataLoader workers", ["train-student", *STUDENT, "dataset=image_folder", "dataset.workers=-1"],
     "dataset.workers must be >= 0"),
    ("resume a dir that is no run", ["train-student", "resume={empty}"], "is not a kdrun run directory"),
]


class Evil:
    """A pickle that creates `marker` when unpickled: what weights_only must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    assert kdrun(root, "train-teacher", *FAST, "hydra.run.dir=teacher").returncode == 0
    teacher = root / "teacher" / "checkpoint.pt"
    data = teacher.read_bytes()
    paths = {"teacher": teacher, "truncated": root / "truncated.pt", "garbage": root / "garbage.pt",
             "plain_dict": root / "dict.pt", "plain_tensor": root / "tensor.pt", "empty": root / "empty",
             "peer_other_dataset": root / "ckpt_epoch_240.pth",
             "a_file": root / "a_file"}
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["garbage"].write_bytes(b"not a checkpoint at all")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, paths["plain_dict"])
    torch.save(torch.zeros(3), paths["plain_tensor"])
    opt = argparse.Namespace(model="cnn1d", dataset="cifar100")  # RepDistiller's layout, its options recorded
    torch.save({"opt": opt, "model": torch.load(teacher, weights_only=True)["state_dict"]}, paths["peer_other_dataset"])
    paths["empty"].mkdir()
    paths["a_file"].write_text("a file, not a directory")
    return paths


def assert_one_line_error(run, phrase: str, workdir: Path) -> str:
    assert run.returncode != 0
    assert "Traceback" not in run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("kdrun: error:")]
    assert len(errors) == 1, run.stderr
    assert phrase in errors[0]
    assert list(workdir.glob("**/summary.json")) == [], "a failed run must not look finished"
    return errors[0]


@pytest.mark.parametrize("args,phrase", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_bad_input_gives_one_line_and_nothing_finished(files, tmp_path, args, phrase):
    run = kdrun(tmp_path, *(a.format(**files) for a in args))
    assert_one_line_error(run, phrase, tmp_path)


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"format": "kdrun-checkpoint", "arch": "cnn1d", "payload": Evil(marker)}, path)
    return path


def test_the_crafted_pickle_really_would_run_code(tmp_path):
    """Guards the tests below: without weights_only, loading this file creates the marker."""
    marker = tmp_path / "marker"
    torch.load(_evil_file(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_a_crafted_teacher_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "PWNED"
    evil = _evil_file(tmp_path / "evil.pt", marker)
    run = kdrun(tmp_path, "distill", *FAST, f"teacher.checkpoint={evil}")
    assert_one_line_error(run, "was not loaded: unpickling it could run code", tmp_path)
    assert not marker.exists()


def test_a_crafted_last_pt_is_not_resumed_and_runs_no_code(files, tmp_path):
    run_dir = Path(shutil.copytree(files["teacher"].parent, tmp_path / "run"))
    (run_dir / "summary.json").unlink()  # make it look interrupted
    marker = tmp_path / "PWNED"
    _evil_file(run_dir / "last.pt", marker)
    run = kdrun(tmp_path, "train-teacher", f"resume={run_dir}")
    assert_one_line_error(run, "was not loaded: unpickling it could run code", tmp_path)
    assert not marker.exists()
