"""Teacher statistics, the gradient-rescaling probe, and label noise."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdrun.data import TensorData
from kdrun.data.noise import flip_labels, with_label_noise
from kdrun.methods.losses import KDLoss
from kdrun.teachers.knowledge import (
    calibration_by_temperature,
    ce_logit_grad_norm,
    expected_calibration_error,
    grad_ratio_corr,
    kd_logit_grad_norm,
    mean_entropy,
    spearman,
)
from kdrun.teachers.store import store_path, teacher_recipe


def _per_example_grads(loss_of_row, z):
    grads = []
    for i in range(len(z)):
        row = z[i:i + 1].clone().requires_grad_(True)
        loss_of_row(row, i).backward()
        grads.append(row.grad[0])
    return torch.stack(grads)


def test_logit_gradient_norms_match_autograd():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (8,), generator=g)
    ce = _per_example_grads(lambda row, i: F.cross_entropy(row, y[i:i + 1]), zs)
    assert torch.allclose(ce.norm(dim=1), ce_logit_grad_norm(zs, y).double(), atol=1e-6)
    for T in (1.0, 4.0):
        kd = _per_example_grads(lambda row, i: KDLoss(T, 1.0)(row, y[i:i + 1], zt[i:i + 1]).total, zs)
        assert torch.allclose(kd.norm(dim=1), kd_logit_grad_norm(zs, zt, T).double(), atol=1e-6)


def test_spearman_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks of b: [1, 0, 2, 4, 3] against [0..4]: d^2 = 1+1+0+1+1 = 4, rho = 1 - 6*4/(5*24) = 0.8
    assert spearman(a, torch.tensor([2.0, 1.0, 3.0, 9.0, 5.0])) == pytest.approx(0.8)
    assert spearman(a, torch.ones(5)) != spearman(a, torch.ones(5))  # nan for a constant side


def test_grad_ratio_corr_is_positive_when_the_teacher_is_sure_where_the_student_is_not():
    """A student still uniform: the KD gradient is large where the teacher is confident (Tang et al. 2020)."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (256,), generator=g)
    confidence = torch.rand(256, generator=g) * 8
    zt = torch.randn(256, 10, generator=g) * 0.1 + F.one_hot(y, 10) * confidence[:, None]
    result = grad_ratio_corr(torch.zeros(256, 10), zt, y, T=1.0)
    assert result["grad_ratio_corr"] > 0.9


def test_ece_and_entropy_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1, 0])
    # bins of width 1/15: confidences 0.9, 0.6, 0.7, 0.5 fall in four different bins;
    # per bin |acc - conf| * 1/4: |1-0.9| + |0-0.6| + |1-0.7| + |1-0.5| = 1.5 -> 0.375
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.375)
    import math
    uniform = torch.full((3, 4), 0.25)
    assert mean_entropy(uniform) == pytest.approx(math.log(4))
    stats = calibration_by_temperature(torch.randn(100, 5), torch.randint(0, 5, (100,)), [1, 4])
    assert set(stats) == {"1", "4"} and stats["4"]["mean_entropy"] > stats["1"]["mean_entropy"]


def test_label_noise_flips_exactly_the_fraction_to_other_classes_deterministically():
    y = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    noisy = flip_labels(y, 0.3, 10, seed=7)
    assert int((noisy != y).sum()) == 1200
    assert torch.equal(noisy, flip_labels(y, 0.3, 10, seed=7))
    assert not torch.equal(noisy, flip_labels(y, 0.3, 10, seed=8))
    assert int((flip_labels(y, 0.0, 10, 0) != y).sum()) == 0
    assert int((flip_labels(y[:7], 0.5, 10, 0) != y[:7]).sum()) == round(3.5)
    flipped = noisy[noisy != y]
    assert flipped.min() >= 0 and flipped.max() < 10


def test_label_noise_leaves_the_inputs_and_test_set_alone():
    g = torch.Generator().manual_seed(0)
    data = TensorData("t", torch.randn(100, 3, generator=g), torch.randint(0, 4, (100,), generator=g),
                      torch.randn(50, 3, generator=g), torch.randint(0, 4, (50,), generator=g), 4)
    noisy = with_label_noise(data, 0.2, 3)
    assert int((noisy.y_train != data.y_train).sum()) == 20
    assert torch.equal(noisy.x_train, data.x_train)
    assert torch.equal(noisy.x_test, data.x_test) and torch.equal(noisy.y_test, data.y_test)
    assert with_label_noise(data, 0.0, 3) is data


TEACHER = {"name": "cnn1d", "kwargs": {}, "train": {"epochs": 2, "seed": 0, "label_smoothing": 0.0}}
DATASET = {"name": "fake", "augment": False, "kwargs": {}, "label_noise": 0.0, "noise_seed": 0}


def _hash(teacher=TEACHER, dataset=DATASET):
    from pathlib import Path

    return store_path(Path("/s"), teacher_recipe(OmegaConf.create(teacher), OmegaConf.create(dataset)))


def test_noise_and_teacher_smoothing_are_part_of_the_teacher_recipe_only_when_set():
    base = _hash()
    old = _hash({**TEACHER, "train": {"epochs": 2, "seed": 0}}, {"name": "fake", "augment": False, "kwargs": {}})
    assert base == old, "clean, unsmoothed teachers keep the hash they had before these options"
    noisy = _hash(dataset={**DATASET, "label_noise": 0.2})
    assert noisy != base and noisy != _hash(dataset={**DATASET, "label_noise": 0.4})
    assert noisy != _hash(dataset={**DATASET, "label_noise": 0.2, "noise_seed": 1})
    assert _hash({**TEACHER, "train": {**TEACHER["train"], "label_smoothing": 0.1}}) != base
