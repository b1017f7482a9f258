"""The training loop: the teacher-logit cache rule, determinism, metrics."""

import torch
from torch import nn

from kdrun.data import TensorData, load_dataset
from kdrun.methods.losses import KDLoss
from kdrun.models import build_model
from kdrun.train.engine import TeacherTargets, fit
from kdrun.train.evaluate import predict
from kdrun.train.recipe import Recipe

CPU = torch.device("cpu")


class CountingTeacher(nn.Module):
    """A linear teacher that remembers every batch it was shown."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.linear(x.flatten(1))


def _data(augment=None) -> TensorData:
    data = load_dataset("fake", "/unused", False, False, {"shape": [1, 12], "num_train": 96, "num_test": 32})
    return TensorData(data.name, data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, augment)


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + torch.randn(x.shape, generator=generator, device=x.device)


def test_without_augmentation_the_teacher_runs_once_and_the_cache_matches_it():
    data, teacher = _data(), CountingTeacher(12, 10)
    targets = TeacherTargets(teacher, data)
    assert len(teacher.seen) == 1 and torch.equal(teacher.seen[0], data.x_train)
    index = torch.tensor([5, 0, 17])
    logits, features = targets(index, data.x_train[index])
    assert features == {}, "no stages asked for"
    assert torch.allclose(logits, teacher.linear(data.x_train[index].flatten(1)))
    fit(build_model("mlp", 10, (1, 12), {"hidden": [8]}), data, Recipe(epochs=2, batch_size=32), CPU,
        loss=KDLoss(4.0, 0.9), teacher=teacher)
    assert len(teacher.seen) == 2, "one pass to fill the cache in fit, none per step"


def test_with_augmentation_the_teacher_sees_the_students_augmented_batch():
    data, teacher = _data(_shift), CountingTeacher(12, 10)
    student = build_model("mlp", 10, (1, 12), {"hidden": [8]})
    student_inputs: list[torch.Tensor] = []
    student.register_forward_pre_hook(lambda module, args: student_inputs.append(args[0].clone()))
    fit(student, data, Recipe(epochs=1, batch_size=32), CPU, loss=KDLoss(4.0, 0.9), teacher=teacher)
    assert TeacherTargets(teacher, data).cache is None
    train_batches = student_inputs[:3]  # then come the evaluation batches
    assert len(teacher.seen) == 3
    for seen, shown in zip(teacher.seen, train_batches):
        assert torch.equal(seen, shown)
        assert not any(torch.equal(seen, data.x_train[i:i + 32]) for i in range(0, 96, 32))


def test_same_seed_same_weights_and_metrics():
    data = _data()
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model("mlp", 10, (1, 12), {"hidden": [8]})
        history = fit(model, data, Recipe(epochs=2, batch_size=16, seed=3), CPU)
        runs.append((model.state_dict(), [h["test_acc"] for h in history], [h["train_loss"] for h in history]))
    (w1, acc1, loss1), (w2, acc2, loss2) = runs
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert acc1 == acc2 and loss1 == loss2


def test_training_learns_and_reports_every_epoch():
    data = _data()
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 12), {"hidden": [32]})
    before = (predict(model, data.x_train).argmax(1) == data.y_train).float().mean().item()
    history = fit(model, data, Recipe(epochs=15, batch_size=16, lr=0.01), CPU)
    after = (predict(model, data.x_train).argmax(1) == data.y_train).float().mean().item()
    assert [h["epoch"] for h in history] == list(range(1, 16))
    assert after > before + 0.3
    assert history[-1]["lr"] < history[0]["lr"], "cosine schedule decays the learning rate"


def test_cached_and_live_teacher_paths_agree_when_augmentation_changes_nothing():
    data, teacher = _data(), CountingTeacher(12, 10)
    identity = TensorData(data.name, data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes,
                          augment=lambda x, generator: x)
    weights = []
    for d in (data, identity):
        torch.manual_seed(0)
        student = build_model("mlp", 10, (1, 12), {"hidden": [8]})
        fit(student, d, Recipe(epochs=2, batch_size=32), CPU, loss=KDLoss(4.0, 0.9), teacher=teacher)
        weights.append(student.state_dict())
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])
