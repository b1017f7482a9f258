"""The KD loss against the formula, its limits, and the T^2 gradient argument."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdrun.methods.losses import KDLoss


def _by_hand(zs, zt, y, T, alpha):
    """alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE, written out with sums and logs."""
    total_kl = 0.0
    total_ce = 0.0
    for i in range(len(y)):
        ps = [math.exp(v / T) for v in zs[i]]
        pt = [math.exp(v / T) for v in zt[i]]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        total_kl += sum(a * math.log(a / b) for a, b in zip(pt, ps))
        p1 = [math.exp(v) for v in zs[i]]
        total_ce += -math.log(p1[y[i]] / sum(p1))
    n = len(y)
    return alpha * T * T * total_kl / n + (1 - alpha) * total_ce / n


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.3)])
def test_matches_hand_computation(T, alpha):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 3])
    parts = KDLoss(T, alpha)(zs, y, zt)
    assert parts.total.item() == pytest.approx(_by_hand(zs.tolist(), zt.tolist(), y.tolist(), T, alpha), rel=1e-9)


def test_alpha_zero_is_cross_entropy():
    zs, zt, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(KDLoss(4.0, 0.0)(zs, y, zt).total, F.cross_entropy(zs, y))


def test_alpha_one_is_pure_distillation():
    zs, zt = torch.randn(8, 10), torch.randn(8, 10)
    a = KDLoss(3.0, 1.0)(zs, torch.zeros(8, dtype=torch.long), zt).total
    b = KDLoss(3.0, 1.0)(zs, torch.full((8,), 9), zt).total
    assert torch.allclose(a, b), "alpha=1 must not depend on the hard labels"
    assert torch.allclose(KDLoss(3.0, 1.0)(zt.clone(), torch.zeros(8, dtype=torch.long), zt).total, torch.tensor(0.0), atol=1e-6)


def test_t_squared_keeps_soft_gradient_comparable_across_temperatures():
    """Without T^2 the soft gradient shrinks like 1/T^2 (Hinton et al. 2015); with it, it stays O(1)."""
    g = torch.Generator().manual_seed(1)
    zt = torch.randn(64, 10, generator=g)
    zs0 = torch.randn(64, 10, generator=g)
    norms = {}
    for T in (2.0, 8.0, 32.0):
        zs = zs0.clone().requires_grad_(True)
        KDLoss(T, 1.0)(zs, torch.zeros(64, dtype=torch.long), zt).total.backward()
        norms[T] = zs.grad.norm().item()
        zs_raw = zs0.clone().requires_grad_(True)
        (KDLoss(T, 1.0)(zs_raw, torch.zeros(64, dtype=torch.long), zt).kd / T**2).backward()
        assert zs_raw.grad.norm().item() == pytest.approx(norms[T] / T**2, rel=1e-5)
    # For large T the scaled gradient tends to a constant (logit matching): within 20% of each other.
    assert norms[32.0] == pytest.approx(norms[8.0], rel=0.2)
    assert 0.2 < norms[2.0] / norms[32.0] < 5


def test_teacher_gets_no_gradient():
    zt = torch.randn(4, 5, requires_grad=True)
    zs = torch.randn(4, 5, requires_grad=True)
    KDLoss(4.0, 0.7)(zs, torch.tensor([0, 1, 2, 3]), zt).total.backward()
    assert zt.grad is None
    assert zs.grad is not None and zs.grad.abs().sum() > 0
