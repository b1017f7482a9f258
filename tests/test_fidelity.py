"""Each method against its authors' formula, re-derived here from their code (never by calling kdrun's losses),
compared in float64 on random inputs, loss and gradient, at several temperatures and shapes.

Every reference below names the file it follows. The references are written the way the authors write them
(probabilities, `F.kl_div` on log-probabilities, masks as products), so they share no code path with kdrun's
log-space implementations; agreement to ~1e-12 in float64 means the same function.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdrun.methods.base import Batch, MethodContext, build_method

D = torch.float64
SHAPES = [(8, 10), (33, 100), (5, 3)]  # (batch, classes): CIFAR-100-like, odd batch, few classes
TEMPERATURES = [1.0, 2.0, 4.0, 8.0]


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    n, k = shape
    zs = torch.randn(n, k, generator=g, dtype=D)
    zt = 3 * torch.randn(n, k, generator=g, dtype=D)  # a sharper teacher, as trained teachers are
    return zs, zt, torch.randint(0, k, (n,), generator=g)


def _value_and_grad(loss_of, zs):
    zs = zs.clone().requires_grad_(True)
    loss = loss_of(zs)
    (grad,) = torch.autograd.grad(loss, zs)
    return loss.detach(), grad


def assert_same_function(kdrun_loss, authors_loss, zs):
    """Equal loss and equal gradient w.r.t. the student's logits, to float64 rounding."""
    ours, theirs = _value_and_grad(kdrun_loss, zs), _value_and_grad(authors_loss, zs)
    assert torch.allclose(ours[0], theirs[0], rtol=1e-10, atol=1e-12), (ours[0].item(), theirs[0].item())
    assert torch.allclose(ours[1], theirs[1], rtol=1e-8, atol=1e-12), (ours[1] - theirs[1]).abs().max().item()


def _method(options, T, alpha=None, num_classes=10):
    return build_method(options, MethodContext(T, alpha, num_classes, 100))


def _logit_loss(options, T, zt, y, alpha=None):
    method = _method(options, T, alpha, zt.shape[1])
    return lambda zs: method(Batch(zs, y, zt)).total


# --- the authors' code, transcribed ----------------------------------------------------------------

def authors_normalize(logit):
    """logit-standardization-KD, mdistiller/distillers/KD.py `normalize` (the same in DKD.py, MLKD.py)."""
    return (logit - logit.mean(dim=-1, keepdims=True)) / (1e-7 + logit.std(dim=-1, keepdims=True))


def authors_kd_loss(zs, zt, T, logit_stand=False):
    """mdistiller/distillers/KD.py `kd_loss` (with logit-standardization-KD's `logit_stand`)."""
    if logit_stand:
        zs, zt = authors_normalize(zs), authors_normalize(zt)
    log_ps, pt = F.log_softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)
    return F.kl_div(log_ps, pt, reduction="none").sum(1).mean() * T**2


def authors_mlkd(zs, zt, y, T, ce_weight, kd_weight, logit_stand):
    """Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py `forward_train` (logit-standardization-KD's
    MLKD.py adds `logit_stand` to `kd_loss` only), with the weak and the strong view the same batch."""
    def cc(T):
        ps, pt = F.softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)
        return ((torch.mm(pt.t(), pt) - torch.mm(ps.t(), ps)) ** 2).sum() / zs.shape[1]

    def bc(T):
        ps, pt = F.softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)
        return ((torch.mm(pt, pt.t()) - torch.mm(ps, ps.t())) ** 2).sum() / zs.shape[0]

    pred = F.softmax(zt, dim=1)
    confidence = pred.max(dim=1).values
    mask = confidence.le(float(np.percentile(confidence.numpy(), 50))).bool()
    class_confidence = pred.sum(0)
    class_mask = class_confidence.le(float(np.percentile(class_confidence.numpy(), 50))).bool()
    temps = [T, 3.0, 5.0, 2.0, 6.0]
    loss_ce = ce_weight * (F.cross_entropy(zs, y) + F.cross_entropy(zs, y))
    kd_weak = sum(kd_weight * (authors_kd_loss(zs, zt, t, logit_stand) * mask).mean() for t in temps)
    kd_strong = sum(kd_weight * authors_kd_loss(zs, zt, t, logit_stand) for t in temps)
    cc_weak = sum(kd_weight * (cc(t) * class_mask).mean() for t in temps)
    bc_weak = sum(kd_weight * (bc(t) * mask).mean() for t in temps)
    return loss_ce + kd_weak + kd_strong + cc_weak + bc_weak


# --- MLKD ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
@pytest.mark.parametrize("logit_std", [False, True])
def test_mlkd_equals_its_authors(shape, T, logit_std):
    """MLKD's authors (logit_std=false) and the logit-standardization authors' MLKD (true: the instance level
    alone is standardized), at the weights each uses (CE 0.1 + KD 0.9; CE 0.1 + KD 9)."""
    zs, zt, y = _inputs(shape, seed=int(T) + shape[0])
    kd_weight = 9.0 if logit_std else 0.9
    options = {"name": "mlkd", "ce_weight": 0.1, "kd_weight": kd_weight, "logit_std": logit_std}
    assert_same_function(_logit_loss(options, T, zt, y),
                         lambda s: authors_mlkd(s, zt, y, T, 0.1, kd_weight, logit_std), zs)


# --- KD and the logit-standardization authors' weights ------------------------------------------------

def authors_kd(zs, zt, y, T, ce_weight, kd_weight, logit_stand=False):
    """mdistiller/distillers/KD.py `forward_train`: ce_weight * CE + kd_weight * kd_loss (the trainer sums them)."""
    return ce_weight * F.cross_entropy(zs, y) + kd_weight * authors_kd_loss(zs, zt, T, logit_stand)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
def test_kd_in_the_classic_form_equals_mdistillers_ce_and_kd_weights(shape, T):
    zs, zt, y = _inputs(shape, seed=int(T) * 7 + shape[1])
    assert_same_function(_logit_loss({"name": "kd"}, T, zt, y, alpha=0.9),
                         lambda s: authors_kd(s, zt, y, T, 0.1, 0.9), zs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
def test_kd_with_logit_std_and_explicit_weights_equals_the_logit_standardization_authors(shape, T):
    """Their recipe (README: --logit-stand --base-temp 2 --kd-weight 9; cfg.py: CE 0.1): CE 0.1 + KD 9, which
    alpha in [0, 1] cannot express."""
    zs, zt, y = _inputs(shape, seed=int(T) * 11 + shape[0])
    options = {"name": "kd", "logit_std": True, "ce_weight": 0.1, "kd_weight": 9.0}
    assert_same_function(_logit_loss(options, T, zt, y), lambda s: authors_kd(s, zt, y, T, 0.1, 9.0, True), zs)
