"""Streamed datasets (image folders, ImageNet's layout) from real JPEG/PNG files: loading, seeded and
worker-independent augmentation, bitwise mid-epoch resume, consistent teaching, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import kdrun, run_dirs, summary

from kdrun.core.errors import Interrupted, KdrunError
from kdrun.data import EpochPlan, batch_sizes, load_dataset
from kdrun.data.synthetic import write_image_folder
from kdrun.methods.losses import KDLoss
from kdrun.models import build_model
from kdrun.train.engine import TeacherTargets, fit
from kdrun.train.recipe import Recipe
from kdrun.train.state import load_state, save_state

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "imgs", classes=3, train_per_class=8,
                              val_per_class=2, size=(20, 24))


def streamed(folder: Path, workers: int = 0, augment: bool = True):
    return load_dataset("image_folder", str(folder), False, augment, {}, image_size=16, workers=workers)


def epoch_batches(data, epoch: int, first_step: int = 0) -> list[torch.Tensor]:
    order = torch.randperm(data.train_size, generator=torch.Generator().manual_seed(7))
    plan = EpochPlan(epoch, order, batch_sizes(data.train_size, 10, 1), first_step, seed=3)
    return [inputs for _, inputs, _ in data.train_batches(plan, CPU, None)]


def test_an_image_folder_is_streamed_with_its_classes_and_the_eval_transform(folder):
    data = streamed(folder)
    assert (data.train_size, data.test_size, data.num_classes, data.input_shape) == (24, 6, 3, (3, 16, 16))
    assert not data.static_inputs  # no teacher-logit cache
    first, second = list(data.test_batches(CPU)), list(data.test_batches(CPU))
    assert torch.equal(first[0][0], second[0][0]) and first[0][1].tolist() == [0, 0, 1, 1, 2, 2]
    assert first[0][0].shape == (6, 3, 16, 16) and -3 < first[0][0].mean() < 3  # normalised


def test_augmentation_is_seeded_by_sample_whatever_the_workers_and_a_resumed_epoch_matches(folder):
    in_main = epoch_batches(streamed(folder, workers=0), epoch=1)
    assert [len(b) for b in in_main] == [10, 10, 4]
    assert all(torch.equal(a, b) for a, b in zip(in_main, epoch_batches(streamed(folder, workers=2), epoch=1)))
    assert all(torch.equal(a, b) for a, b in zip(in_main[1:], epoch_batches(streamed(folder), 1, first_step=1)))
    assert not torch.equal(in_main[0], epoch_batches(streamed(folder), epoch=2)[0]), "epochs draw anew"
    plain = epoch_batches(streamed(folder, augment=False), epoch=1)
    assert not torch.equal(in_main[0], plain[0]) and torch.equal(plain[0], epoch_batches(
        streamed(folder, augment=False), epoch=2)[0]), "without augment the same order gives the same inputs"


def _student(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("mlp", 3, (3, 16, 16), {"hidden": [16]})


def test_a_streamed_run_stopped_mid_epoch_resumes_bitwise(folder, tmp_path):
    data, recipe = streamed(folder, workers=1), Recipe(epochs=2, batch_size=10, lr=0.01, seed=2)
    teacher, loss = build_model("mlp", 3, (3, 16, 16), {"hidden": [8]}), KDLoss(4.0, 0.9)
    reference = _student()
    expected = fit(reference, data, recipe, CPU, loss=loss, teacher=teacher)
    stops = iter([False, True])
    path = tmp_path / "last.pt"
    with pytest.raises(Interrupted):
        fit(_student(), data, recipe, CPU, loss=loss, teacher=teacher, checkpoint=lambda s: save_state(path, s),
            stop=lambda: next(stops))
    assert load_state(path)["step"] == 2
    resumed = _student(seed=9)
    history = fit(resumed, data, recipe, CPU, loss=loss, teacher=teacher, state=load_state(path))
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in expected]
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))


def test_the_teacher_sees_the_students_streamed_batch(folder):
    data = streamed(folder)
    teacher = build_model("mlp", 3, (3, 16, 16), {"hidden": [8]})
    assert TeacherTargets(teacher, data).cache is None
    seen, shown = [], []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    student = _student()
    student.register_forward_pre_hook(lambda module, args: shown.append(args[0].clone()))
    fit(student, data, Recipe(epochs=1, batch_size=10), CPU, loss=KDLoss(4.0, 0.9), teacher=teacher)
    assert len(seen) == 3 and all(torch.equal(t, s) for t, s in zip(seen, shown[:3]))


def test_imagenet_layout_is_read_by_torchvision(tmp_path):
    """torchvision's ImageNet: DIR/meta.bin (wnid -> class names, val wnids) and DIR/{train,val}/<wnid>/."""
    root = tmp_path / "imagenet"
    write_image_folder(root, classes=2, train_per_class=2, val_per_class=1, size=(12, 12), formats=("JPEG",))
    for split in ("train", "val"):
        for label, wnid in enumerate(("n01440764", "n01443537")):
            (root / split / f"class{label}").rename(root / split / wnid)
    torch.save(({"n01440764": ("tench",), "n01443537": ("goldfish",)}, ["n01440764", "n01443537"]), root / "meta.bin")
    data = load_dataset("imagenet", str(root), False, True, {}, image_size=8)
    assert (data.name, data.train_size, data.test_size, data.num_classes) == ("imagenet", 4, 2, 2)
    assert next(data.test_batches(CPU))[0].shape == (2, 3, 8, 8)


def test_missing_or_mismatched_folders_are_one_line(tmp_path, folder):
    with pytest.raises(KdrunError, match=f"not found or empty under {tmp_path / 'train'}"):
        streamed(tmp_path)
    odd = write_image_folder(tmp_path / "odd", classes=2, train_per_class=1, val_per_class=1, size=(8, 8))
    (odd / "val" / "class1").rename(odd / "val" / "other")
    with pytest.raises(KdrunError, match="hold different classes"):
        streamed(odd)
    with pytest.raises(KdrunError, match="does not accept these options"):
        load_dataset("fake", "/unused", False, False, {}, image_size=32)


TINY = ["dataset=image_folder", "dataset.image_size=16", "dataset.workers=1", "epochs=2", "optim.batch_size=8",
        "progress=false", "latency.min_seconds=0.01", "latency.batch_size=4", "threads=1"]


def test_train_student_and_distill_run_end_to_end_on_an_image_folder(folder, workdir):
    data_dir = f"dataset.data_dir={folder}"
    student = kdrun(workdir, "train-student", *TINY, data_dir, "student=mlp")
    assert student.returncode == 0, student.stderr
    distill = kdrun(workdir, "distill", *TINY, data_dir, "student=mlp", "teacher=resnet56", "teacher.name=resnet8",
                    "teacher.train.epochs=1", "teacher.train.optim.batch_size=8")
    assert distill.returncode == 0, distill.stderr
    [baseline], [distilled] = run_dirs(workdir, "train_student"), run_dirs(workdir, "distill")
    for run_dir in (baseline, distilled):
        s = summary(run_dir)
        assert s["dataset"] == "image_folder" and 0 <= s["test_acc"] <= 1 and s["epochs"] == 2
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    s = summary(distilled)
    assert s["teacher"]["model"] == "resnet8" and s["speedup"] > 0 and "kd" in json.loads(
        (distilled / "metrics.jsonl").read_text().splitlines()[0])
    assert "streamed by 1 DataLoader workers" in (distilled / "distill.log").read_text()
    [stored] = (workdir / "outputs" / "teachers").glob("resnet8-image_folder-*.pt")
    assert s["teacher"]["checkpoint"] == str(stored)
