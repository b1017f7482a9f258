"""The loss variants against hand computations, and the synthetic teachers' invariants."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdrun.methods.base import MethodContext, build_method
from kdrun.methods.losses import (
    ClassSimilarityLoss,
    DKDLoss,
    KDLoss,
    LabelSmoothingLoss,
    TrueClassProbLoss,
    cross_entropy,
    smoothed_targets,
)
from kdrun.teachers.knowledge import class_matrix, teacher_stats


def _softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _synthetic_by_hand(zs, y, targets, T, alpha):
    """alpha * T^2 * mean KL(q_i || softmax(zs_i/T)) + (1 - alpha) * mean CE, with sums and logs."""
    n = len(y)
    kl = sum(_kl(targets[i], _softmax(zs[i], T)) for i in range(n)) / n
    ce = sum(-math.log(_softmax(zs[i])[y[i]]) for i in range(n)) / n
    return alpha * T * T * kl + (1 - alpha) * ce


def _batch(seed=0, n=6, k=5):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(n, k, generator=g, dtype=torch.float64)
    zt = 2 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    return zs, zt, y


@pytest.mark.parametrize("T,alpha,epsilon", [(1.0, 1.0, 0.1), (4.0, 0.9, 0.3), (2.0, 0.5, 0.0)])
def test_label_smoothing_matches_hand_computation(T, alpha, epsilon):
    zs, zt, y = _batch()
    k = zs.shape[1]
    q = [[1 - epsilon if c == y[i] else epsilon / (k - 1) for c in range(k)] for i in range(len(y))]
    got = LabelSmoothingLoss(T, alpha, k, epsilon)(zs, y, zt).total.item()
    assert got == pytest.approx(_synthetic_by_hand(zs.tolist(), y.tolist(), q, T, alpha), rel=1e-6)


def test_label_smoothing_at_t1_has_the_gradient_of_szegedy_label_smoothing():
    """KL(q || p) = CE(q, p) - H(q): same gradient as torch's label_smoothing with e = epsilon K / (K - 1)."""
    zs, zt, y = _batch()
    k, epsilon = zs.shape[1], 0.2
    a = zs.clone().requires_grad_(True)
    LabelSmoothingLoss(1.0, 1.0, k, epsilon)(a, y, zt).total.backward()
    b = zs.clone().requires_grad_(True)
    F.cross_entropy(b, y, label_smoothing=epsilon * k / (k - 1)).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-9)


@pytest.mark.parametrize("T,alpha", [(1.0, 1.0), (4.0, 0.9)])
def test_kd_pt_matches_hand_computation(T, alpha):
    zs, zt, y = _batch(1)
    k = zs.shape[1]
    q = []
    for i in range(len(y)):
        pt = _softmax(zt[i].tolist(), T)[y[i]]
        q.append([pt if c == y[i] else (1 - pt) / (k - 1) for c in range(k)])
    got = TrueClassProbLoss(T, alpha, k)(zs, y, zt).total.item()
    assert got == pytest.approx(_synthetic_by_hand(zs.tolist(), y.tolist(), q, T, alpha), rel=1e-6)


def test_kd_pt_targets_sum_to_one_and_keep_each_examples_true_class_probability():
    zs, zt, y = _batch(2, n=32, k=7)
    q = TrueClassProbLoss(3.0, 0.9, 7).targets(y, zt)
    assert torch.allclose(q.sum(1), torch.ones(32, dtype=q.dtype), atol=1e-6)
    pt = F.softmax(zt / 3.0, dim=1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(q.gather(1, y[:, None]).squeeze(1).double(), pt, atol=1e-6)
    others = q.masked_select(~F.one_hot(y, 7).bool()).view(32, 6)
    assert torch.allclose(others, others[:, :1].expand(32, 6)), "the rest is spread uniformly"


def test_kd_sim_targets_are_the_class_relationship_rows_identical_within_a_class():
    zs, zt, y = _batch(3, n=40, k=4)
    matrix = class_matrix(zt, y, 4.0, 4)
    assert torch.allclose(matrix.sum(1), torch.ones(4), atol=1e-6)
    for c in range(4):  # by hand: the mean of the softened predictions of class c's examples
        rows = [_softmax(zt[i].tolist(), 4.0) for i in range(40) if y[i] == c]
        assert matrix[c].tolist() == pytest.approx([sum(col) / len(rows) for col in zip(*rows)], rel=1e-5)
    loss = ClassSimilarityLoss(4.0, 0.9, matrix)
    q = loss.targets(y, zt)
    for c in range(4):
        assert torch.equal(q[y == c], q[y == c][:1].expand(int((y == c).sum()), 4))
    expected = _synthetic_by_hand(zs.tolist(), y.tolist(), q.tolist(), 4.0, 0.9)
    assert loss(zs, y, zt).total.item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(q, loss.targets(y, zt.flip(0))), "independent of the example's own teacher logits"


def test_class_matrix_gives_an_absent_class_the_uniform_row():
    matrix = class_matrix(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 0, 1]), 1.0, 3)
    assert torch.allclose(matrix[2], torch.full((3,), 1 / 3))


def test_smoothed_targets_rows_sum_to_one():
    y = torch.tensor([0, 2, 1])
    q = smoothed_targets(y, torch.tensor([0.1, 0.5, 0.9]), 3)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert q[1].tolist() == pytest.approx([0.25, 0.25, 0.5])


def _dkd_by_hand(zs, zt, y, T, alpha, beta):
    n, k = len(y), len(zs[0])
    tckd = nckd = ce = 0.0
    for i in range(n):
        ps, pt = _softmax(zs[i], T), _softmax(zt[i], T)
        tckd += _kl([pt[y[i]], 1 - pt[y[i]]], [ps[y[i]], 1 - ps[y[i]]])
        others = [c for c in range(k) if c != y[i]]
        nckd += _kl(_softmax([zt[i][c] for c in others], T), _softmax([zs[i][c] for c in others], T))
        ce += -math.log(_softmax(zs[i])[y[i]])
    return ce / n + T * T * (alpha * tckd + beta * nckd) / n


@pytest.mark.parametrize("T,alpha,beta", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_dkd_matches_hand_computation(T, alpha, beta):
    zs, zt, y = _batch(4)
    got = DKDLoss(T, alpha, beta)(zs, y, zt).total.item()
    assert got == pytest.approx(_dkd_by_hand(zs.tolist(), zt.tolist(), y.tolist(), T, alpha, beta), rel=1e-6)


def test_dkd_with_beta_equal_to_one_minus_pt_is_classic_kd():
    """Zhao et al.'s identity: KD = TCKD + (1 - p_y^t) NCKD (one example, so the weight is a number)."""
    zs, zt, y = _batch(5, n=1)
    T = 3.0
    pt = F.softmax(zt / T, dim=1)[0, y[0]].item()
    dkd = DKDLoss(T, 1.0, 1 - pt)(zs, y, zt).kd
    assert dkd.item() == pytest.approx(KDLoss(T, 1.0)(zs, y, zt).kd.item(), rel=1e-6)


def test_dkd_warmup_ramps_the_kd_term():
    zs, zt, y = _batch(6)
    loss = DKDLoss(4.0, 1.0, 8.0, warmup=4)
    parts = loss(zs, y, zt)
    assert parts.total.item() == pytest.approx(parts.ce.item() + 0.25 * parts.kd.item())
    loss.start_epoch(10)
    parts = loss(zs, y, zt)
    assert parts.total.item() == pytest.approx(parts.ce.item() + parts.kd.item())


def test_the_registry_builds_each_logit_variant_with_the_run_temperature_and_alpha():
    zt, y = torch.randn(50, 4), torch.randint(0, 4, (50,))
    stats = teacher_stats(zt, y, 2.0, 4)
    assert stats.epsilon == pytest.approx(1 - F.softmax(zt / 2, 1).gather(1, y[:, None]).mean().item(), rel=1e-5)
    kinds = {"ce": type(cross_entropy), "kd": KDLoss, "ls": LabelSmoothingLoss, "kd_pt": TrueClassProbLoss,
             "kd_sim": ClassSimilarityLoss, "dkd": DKDLoss}
    context = MethodContext(T=2.0, alpha=0.7, num_classes=4, num_train=50, teacher_stats=stats)
    for name, kind in kinds.items():
        loss = build_method(OmegaConf.create({"name": name}), context).loss
        assert isinstance(loss, kind)
        if name not in ("ce", "dkd"):
            assert (loss.T, loss.alpha) == (2.0, 0.7)
    ls = build_method(OmegaConf.create({"name": "ls", "epsilon": None}), context)
    assert ls.loss.epsilon == stats.epsilon, "epsilon: null matches the teacher's non-target mass at T"
    assert build_method(OmegaConf.create({"name": "ls", "epsilon": 0.05}), context).loss.epsilon == 0.05


def _dkd_float64_log_space(zs, zt, y, T):
    """TCKD + NCKD (weights 1, 8) * T^2 in float64, each probability a difference of logsumexps over index lists."""
    zs, zt = zs.double() / T, zt.double() / T
    total = zs.new_zeros(())
    for i, target in enumerate(y.tolist()):
        others = [c for c in range(zs.shape[1]) if c != target]
        log_bin = [(z[target] - torch.logsumexp(z, 0), torch.logsumexp(z[others], 0) - torch.logsumexp(z, 0))
                   for z in (zs[i], zt[i])]
        (_, _), (lt_y, lt_rest) = log_bin
        tckd = sum(t.exp() * (t - s) for s, t in zip(log_bin[0], log_bin[1]))
        log_hat_s, log_hat_t = torch.log_softmax(zs[i][others], 0), torch.log_softmax(zt[i][others], 0)
        nckd = (log_hat_t.exp() * (log_hat_t - log_hat_s)).sum()
        total = total + tckd + 8.0 * nckd
    return total * T * T / len(y)


@pytest.mark.parametrize("margin", [5, 20, 40, 60])
def test_dkd_of_a_confident_student_matches_a_float64_log_space_reference(margin):
    """The student's target logit leads by margin * T: its 1 - p_y is below float32 resolution from ~17 T on."""
    T, classes = 4.0, 100
    torch.manual_seed(margin)
    y = torch.randint(0, classes, (8,))
    zs = torch.randn(8, classes) + margin * T * F.one_hot(y, classes)
    zt = torch.randn(8, classes) * 2 + 3 * T * F.one_hot(y, classes)
    zs64 = zs.double().requires_grad_()
    reference = _dkd_float64_log_space(zs64, zt, y, T)
    reference.backward()
    zs32 = zs.clone().requires_grad_()
    got = DKDLoss(T, 1.0, 8.0)(zs32, y, zt).kd
    got.backward()
    assert got.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(zs32.grad.double(), zs64.grad, rtol=1e-4, atol=1e-7)
