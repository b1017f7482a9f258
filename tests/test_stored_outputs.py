"""Stored teacher outputs (`teacher.outputs=store`): replayed augmentation, the teacher's top-k per (sample,
epoch) on disk equal to a live teacher's on the same crop, later students reading it without a teacher forward,
an interrupted build resuming, and a sweep through the CLI running the teacher once per (sample, epoch)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kdrun, run_dirs, summary
from omegaconf import OmegaConf

from kdrun.bench.stored import samples_seen
from kdrun.core.errors import KdrunError
from kdrun.data import EpochPlan, batch_sizes, load_dataset
from kdrun.data.synthetic import write_image_folder
from kdrun.methods.base import MethodContext, build_method
from kdrun.methods.losses import KDLoss
from kdrun.models import build_model
from kdrun.run.config import register_schemas
from kdrun.run.preflight import compose_plain
from kdrun.sweep.groups import plan
from kdrun.teachers.outputs import OutputStore, open_store, top_k
from kdrun.train.engine import fit
from kdrun.train.recipe import Recipe

CPU = torch.device("cpu")
RECIPE = Recipe(epochs=2, batch_size=16, lr=1e-3, seed=5)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """CIFAR-shaped PNG files (real files, decoded by PIL in the loader)."""
    return write_image_folder(tmp_path_factory.mktemp("images") / "imgs", classes=4, train_per_class=10,
                              val_per_class=2, size=(20, 20), formats=("png",))


def streamed(folder: Path):
    return load_dataset("image_folder", str(folder), False, True, {}, image_size=16, workers=0)


def in_memory():
    return load_dataset("fake", "~", False, True, {"shape": [3, 12, 12], "num_train": 40, "num_test": 8})


def store(tmp_path: Path, teacher: torch.nn.Module, data, k: int = 2) -> OutputStore:
    return open_store(tmp_path, "resnet8", {"sha256": "test"}, teacher, data, RECIPE.seed, k, CPU)


def student_batches(data, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(index, inputs) of each training batch a replayable run seeded RECIPE.seed shows in `epoch`."""
    order = torch.randperm(data.train_size, generator=torch.Generator().manual_seed(epoch))
    plan = EpochPlan(epoch, order, batch_sizes(data.train_size, 16, 1), 0, seed=RECIPE.seed)
    return [(index, inputs) for index, inputs, _ in data.with_replay().train_batches(plan, CPU, None)]


@pytest.mark.parametrize("kind", ["streamed", "in_memory"])
def test_replayed_augmentation_is_the_crop_the_student_saw(kind, folder):
    data = streamed(folder) if kind == "streamed" else in_memory()
    index, inputs = student_batches(data, epoch=2)[1]
    chunks = [index.tolist()]
    again = next(iter(data.replayed_batches(RECIPE.seed, 2, chunks, CPU)))
    assert torch.equal(again, inputs), "the same (seed, epoch, index) draws the same crop and flip"
    assert torch.equal(again, next(iter(data.replayed_batches(RECIPE.seed, 2, chunks, CPU))))
    other_epoch = next(iter(data.replayed_batches(RECIPE.seed, 3, chunks, CPU)))
    assert not torch.equal(again, other_epoch), "each epoch draws anew"


def test_stored_top_k_equal_a_live_teachers_on_the_same_crop(folder, tmp_path):
    data = streamed(folder)
    teacher = build_model("resnet8", data.num_classes, data.input_shape, {}).eval()
    outputs = store(tmp_path, teacher, data).epoch(2)
    for index, inputs in student_batches(data, epoch=2):
        with torch.no_grad():
            values, classes, tail = top_k(teacher(inputs), 2)
        assert torch.equal(outputs.indices[index], classes)
        torch.testing.assert_close(outputs.values[index], values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outputs.tail[index], tail, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        full = teacher(inputs)
    rebuilt = outputs.logits(index)
    mass_outside = 1 - full.softmax(1).gather(1, classes).sum(1)
    torch.testing.assert_close(rebuilt.softmax(1).gather(1, classes), full.softmax(1).gather(1, classes))
    torch.testing.assert_close(1 - rebuilt.softmax(1).gather(1, classes).sum(1), mass_outside)


def test_later_students_read_the_store_without_a_teacher_forward(folder, tmp_path):
    data = streamed(folder)
    teacher = build_model("resnet8", data.num_classes, data.input_shape, {})
    forwards = samples_seen(teacher)
    for student_seed in range(2):
        torch.manual_seed(student_seed)
        student = build_model("mlp", data.num_classes, data.input_shape, {"hidden": [16]})
        shared = store(tmp_path, teacher, data)
        history = fit(student, data, RECIPE, CPU, teacher=teacher, loss=KDLoss(4.0, 0.9), teacher_outputs=shared)
        assert len(history) == 2 and all(np.isfinite(row["kd"]) for row in history)
        assert shared.forwarded == (2 * data.train_size if student_seed == 0 else 0)
        assert forwards[0] == 2 * data.train_size, "one pass per (sample, epoch), for both students together"
    assert sorted(path.name for path in shared.directory.glob("*.npy")) == ["epoch-0001.npy", "epoch-0002.npy"]


class FailsAfter(torch.nn.Module):
    """A teacher killed mid-build: it raises on its `calls`-th forward."""

    def __init__(self, model: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.model, self.calls = model, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.model(x)


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path):
    data = in_memory()
    teacher = build_model("resnet8", data.num_classes, data.input_shape, {}).eval()
    interrupted = store(tmp_path / "a", FailsAfter(teacher, calls=3), data)
    interrupted.chunk = 8
    with pytest.raises(KeyboardInterrupt):
        interrupted.epoch(1)
    assert not interrupted.path(1).exists() and interrupted.forwarded == 16
    forwards = samples_seen(teacher)
    resumed = store(tmp_path / "a", teacher, data)
    resumed.chunk = 8
    outputs = resumed.epoch(1)
    assert forwards[0] == data.train_size - 16, "the two finished chunks are not run again"
    fresh = store(tmp_path / "b", teacher, data).epoch(1)
    assert torch.equal(outputs.indices, fresh.indices) and torch.equal(outputs.values, fresh.values)
    assert not list(resumed.directory.glob(".*.partial")) and not list(resumed.directory.glob(".*.rows"))


def test_parallel_jobs_build_an_epoch_once(tmp_path):
    data = in_memory()
    teacher = build_model("resnet8", data.num_classes, data.input_shape, {}).eval()
    jobs = [store(tmp_path, teacher, data) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:  # each job its own lock handle, as two processes would have
        first, second = pool.map(lambda job: job.epoch(1), jobs)
    assert sorted(job.forwarded for job in jobs) == [0, data.train_size]
    assert torch.equal(first.values, second.values) and torch.equal(first.indices, second.indices)


def test_the_store_key_holds_the_seed_only_when_augmentation_depends_on_it(tmp_path):
    teacher = build_model("mlp", 10, (3, 12, 12), {"hidden": [8]})

    def directory(augment: bool, seed: int) -> Path:
        data = load_dataset("fake", "~", False, augment, {"shape": [3, 12, 12], "num_train": 40, "num_test": 8})
        return open_store(tmp_path, "mlp", {"sha256": "test"}, teacher, data, seed, 2, CPU).directory

    assert directory(False, 0) == directory(False, 1) != directory(True, 0) != directory(True, 1)


def test_a_store_refuses_feature_methods_and_a_k_beyond_the_classes(tmp_path):
    data = in_memory()
    teacher = build_model("resnet8", data.num_classes, data.input_shape, {})
    student = build_model("resnet8", data.num_classes, data.input_shape, {})
    with pytest.raises(KdrunError, match="teacher.top_k=11 but dataset 'fake' has 10 classes"):
        store(tmp_path, teacher, data, k=11)
    attention = build_method({"name": "at"}, MethodContext(4.0, 0.9, 10, 40, student, teacher, data.x_train[:2]))
    with pytest.raises(KdrunError, match="teacher.outputs=store keeps the teacher's logits only"):
        fit(student, data, RECIPE, CPU, teacher=teacher, loss=attention, teacher_outputs=store(tmp_path, teacher, data))


def test_a_sweep_through_the_cli_runs_the_teacher_once_per_sample_and_epoch(workdir):
    args = ["distill", "-m", "T=2,4", "dataset=fake", "dataset.augment=true", "dataset.kwargs.shape=[3,8,8]",
            "dataset.kwargs.num_train=64", "dataset.kwargs.num_test=16", "teacher=resnet56", "teacher.train.epochs=1",
            "student=resnet8", "epochs=2", "teacher.outputs=store", "teacher.top_k=3", "progress=false",
            "latency.min_seconds=0.01", "latency.min_reps=2", "latency.batch_size=16", "threads=1", "probe=false"]
    done = kdrun(workdir, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = [summary(run)["teacher"]["outputs"] for run in run_dirs(workdir, "distill")]
    assert [o["mode"] for o in outputs] == ["store", "store"] and outputs[0]["top_k"] == 3
    assert sorted(o["samples_run_through_teacher"] for o in outputs) == [0, 2 * 64]


def test_the_stored_bench_counts_one_teacher_pass_per_sample_and_epoch_for_the_sweep():
    from kdrun.bench.stored import run_stored_bench, show_stored

    result = run_stored_bench("cpu", epochs=2, workers=0, images=10)
    show_stored(result)
    assert result["passes_per_sample_epoch"] == {"live": 4.0, "store": 1.0}
    assert result["teacher_samples"]["store"] == 2 * result["train_samples"] == 20
    assert result["flops"]["teacher"] >= 4 * result["flops"]["student"]
    assert 0 < result["stored_epoch_seconds"] and 0 < result["live_epoch_seconds"]


def test_a_stacked_sweep_runs_store_jobs_alone():
    register_schemas()
    configs = [OmegaConf.create(compose_plain("distill", ["dataset=fake", "teacher.outputs=store", f"seed={seed}"]))
               for seed in (0, 1)]
    groups = plan(configs, max_group_size=8)
    assert [g.jobs for g in groups] == [[0], [1]] and "teacher.outputs=store" in groups[0].alone_because
