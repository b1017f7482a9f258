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
    ("checkpoint_min_seconds < 0", ["train-student", "checkpoint_min_seconds=-1"],
     "checkpoint_min_seconds must be >= 0, 0 meaning every due epoch (got -1.0)"),
    ("bad value in a sweep", ["distill", "-m", "T=1,0"], "T must be > 0 (got 0.0)"),
    ("unknown dataset", ["distill", "dataset=cifar1000"],
     "unknown dataset 'cifar1000'; choose one of: cifar10, cifar100, fake, fashion_mnist, image_folder, imagenet, "
     "mnist, mnist1d"),
    ("unknown student", ["train-student", "student=nope"], "unknown student 'nope'; choose one of: cnn1d_small, custom, mlp,"),
    ("unknown method option", ["distill", "loss=crd", "loss.negativs=5"],
     "unknown key 'loss.negativs' for this command; valid keys under 'loss': name, ce_weight"),
    ("method option of the wrong type", ["distill", "loss=crd", "loss.negatives=many"], "invalid value for loss.negatives"),
    ("val_split >= 1", ["distill", "dataset.val_split=1"], "dataset.val_split must be in [0, 1) (got 1.0)"),
    ("spatial method on a flat student", ["distill", *FAST, "loss=at"],
     "loss=at needs stages with a spatial extent, but Sequential declares none"),
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
    ("train-teacher given weights", ["train-teacher", "teacher=tv", "teacher.weights=IMAGENET1K_V1"],
     "train-teacher trains a teacher from scratch"),
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
    ("label noise with one class", ["train-student", *STUDENT, "dataset.kwargs.num_classes=1", "dataset.label_noise=0.2"],
     "dataset.label_noise=0.2 needs at least 2 classes"),
    ("a split left empty", ["train-student", *STUDENT, "dataset.kwargs.num_test=0"], "has 512 training and 0 test examples"),
    ("a negative width", ["train-student", *STUDENT, "student.kwargs.hidden=[-5]"],
     "cannot build model 'mlp' with these options (Trying to create tensor with negative dimension -5"),
    ("a negative class count", ["train-student", *STUDENT, "dataset.kwargs.num_classes=-3"], "cannot build dataset 'fake'"),
    ("a teacher built with other kwargs", ["distill", *FAST, "teacher.checkpoint={teacher}", "teacher.kwargs.channels=16"],
     "was built with teacher.kwargs.channels=8 but the config says 16"),
    ("a non-finite KD term before any update", ["distill", *FAST, "T=1e30"],
     "training loss became nan in epoch 1, step 1 of 6; the very first step, before any update; check the data and "
     "the model's teacher and T"),
]

# Mistakes the CLI catches before Hydra starts: checked in-process through the same `kdrun.cli.main`
# (fast), each also leaving no run directory behind. `{run}` is a finished run, `{sweep}` a sweep dir.
BEFORE_ANY_RUN = [
    ("seed < 0", ["train-student", "seed=-1"], "seed must be in [0, 2^63) (got -1)"),
    ("seed = 2^63", ["train-student", "seed=9223372036854775808"], "seed is too large (got 9223372036854775808"),
    ("seed beyond 64 bits", ["train-student", "seed=18446744073709551616"], "seed is too large"),
    ("teacher seed < 0", ["distill", "teacher.train.seed=-1"], "teacher.train.seed must be in [0, 2^63)"),
    ("noise seed < 0", ["train-student", "dataset.noise_seed=-5"], "dataset.noise_seed must be in [0, 2^63)"),
    ("momentum < 0", ["train-student", "optim=sgd", "optim.momentum=-0.5"], "optim.momentum must be >= 0 (got -0.5)"),
    ("nesterov without momentum", ["train-student", "optim=sgd", "optim.momentum=0", "optim.nesterov=true"],
     "optim.nesterov=true needs optim.momentum > 0"),
    ("gamma 0", ["train-student", "optim.gamma=0"], "optim.gamma must be > 0"),
    ("latency timing nothing", ["train-student", "latency.min_reps=0", "latency.min_seconds=0"],
     "latency.min_reps must be >= 1 (got 0): with none, nothing is timed"),
    ("latency batch < 0", ["distill", "latency.batch_size=-1"], "latency.batch_size must be >= 0"),
    ("latency bound < min", ["distill", "latency.min_seconds=5", "latency.max_seconds=1"],
     "latency.min_seconds must be >= 0 and at most latency.max_seconds"),
    ("latency warmup < 0", ["train-student", "latency.warmup=-1"], "latency.warmup must be >= 0"),
    ("threads beyond any machine", ["train-student", "threads=100000000000"], "threads must be in [0, 4096]"),
    ("~KEY of the schema", ["train-student", "~seed"], "cannot remove 'seed' (~seed): every run needs it"),
    ("~GROUP", ["train-student", "~optim"], "cannot remove the config group 'optim'"),
    ("+KEY the schema lacks", ["train-student", "+bogus=1"], "unknown key 'bogus' for this command"),
    ("++KEY the schema lacks", ["distill", "++bogus=1"], "unknown key 'bogus' for this command"),
    ("+KEY nested", ["train-student", "+optim.bogus=1"], "unknown key 'optim.bogus' for this command; valid keys under 'optim'"),
    ("unknown teacher outputs", ["distill", "teacher.outputs=cached"], "teacher.outputs must be one of live, store "
     "(got 'cached')"),
    ("top-k of none", ["distill", "teacher.top_k=0"], "teacher.top_k must be >= 1 (got 0)"),
    ("an image student on 1-D signals (it used to fail after the teacher trained)", ["distill", "student=resnet8"],
     "student resnet8 takes images (channels, height, width), but dataset mnist1d gives 1-D signals"),
    ("a 1-D teacher on images", ["train-teacher", "dataset=cifar10", "teacher=cnn1d"],
     "teacher cnn1d takes 1-D signals (channels, length), but dataset cifar10 gives images"),
    ("a ViT student on a fake 1-D set", ["train-student", "dataset=fake", "student=timm",
                                         "student.name=timm_vit_tiny_patch16_224"], "gives 1-D signals"),
    ("T = inf", ["distill", "T=1e309"], "T must be a finite number (got inf)"),
    ("lr = nan", ["train-student", "optim.lr=nan"], "optim.lr must be a finite number (got nan)"),
    ("alpha = nan in a sweep", ["distill", "-m", "alpha=0.5,nan"], "alpha must be a finite number (got nan)"),
    ("400-digit int", ["train-student", "epochs=1" + "0" * 400], "epochs is too large (got 10000000000000000000..., "
                                                                  "401 digits)"),
    ("400-digit float", ["distill", "T=1" + "0" * 400], "T is too large (int too large to convert to float); use a value below 1e308"),
    ("n_jobs=0", ["train-student", "-m", "seed=0,1", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=0"],
     "hydra.launcher.n_jobs must be >= 1"),
    ("unknown launcher", ["train-student", "-m", "seed=0,1", "hydra/launcher=nope"],
     "unknown hydra/launcher 'nope'; choose one of: basic, joblib, kdrun_slurm, local_parallel"),
    ("--help with a bad override", ["distill", "--help", "bogus=1"], "unknown key 'bogus' for this command"),
    ("--cfg with -m", ["distill", "-m", "T=1,2", "--cfg", "job"], "--cfg prints one job's config; drop -m"),
    ("0-job sweep", ["train-student", "-m", "seed=range(0,0)"], "the sweep over seed has no values"),
    ("run dir holding a finished run", ["train-student", "hydra.run.dir={run}"], "already holds a finished run"),
    ("sweep dir holding a sweep", ["train-student", "-m", "seed=0,1", "hydra.sweep.dir={sweep}"],
     "already holds a sweep; pass another hydra.sweep.dir=DIR, or run its unfinished jobs with resume="),
    ("resume a sweep of another command", ["distill", "resume={sweep}"], "is a 'train_student' sweep, not 'distill'"),
]


@pytest.mark.parametrize("args,phrase", [row[1:] for row in BEFORE_ANY_RUN], ids=[row[0] for row in BEFORE_ANY_RUN])
def test_bad_input_before_any_run_in_process(tmp_path, monkeypatch, capsys, args, phrase):
    from kdrun.cli import main

    monkeypatch.chdir(tmp_path)
    run, sweep = tmp_path / "done", tmp_path / "sweep"
    for directory in (run, sweep):
        (directory / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (sweep / "multirun.yaml").write_text("command: train_student\n")
    before = sorted(tmp_path.rglob("*"))
    assert main([a.format(run=run, sweep=sweep) for a in args]) == 2
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("kdrun: error:") and phrase in errors[0], captured.err
    assert "Traceback" not in captured.out + captured.err
    assert sorted(tmp_path.rglob("*")) == before, "nothing was created"


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
