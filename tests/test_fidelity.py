"""Each method against its authors' formula, re-derived here from their code (never by calling kdrun's losses),
compared in float64 on random inputs, loss and gradient, at several temperatures and shapes.

Every reference below names the file it follows. The references are written the way the authors write them
(probabilities, `F.kl_div` on log-probabilities, masks as products), so they share no code path with kdrun's
log-space implementations; agreement to ~1e-12 in float64 means the same function.
"""

from __future__ import annotations

import dataclasses

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


# --- DKD (mdistiller) and its logit-standardized form ---------------------------------------------

def authors_dkd(zs, zt, y, T, alpha, beta, logit_stand=False):
    """mdistiller/distillers/DKD.py `dkd_loss` (logit-standardization-KD's adds `logit_stand`) plus CE at weight 1,
    after the warm-up (min(epoch / warmup, 1) = 1)."""
    ce = F.cross_entropy(zs, y)
    if logit_stand:
        zs, zt = authors_normalize(zs), authors_normalize(zt)
    gt = torch.zeros_like(zs).scatter_(1, y.unsqueeze(1), 1).bool()
    other = torch.ones_like(zs).scatter_(1, y.unsqueeze(1), 0).bool()

    def cat_mask(t):
        return torch.cat([(t * gt).sum(1, keepdims=True), (t * other).sum(1, keepdims=True)], dim=1)

    ps, pt = cat_mask(F.softmax(zs / T, dim=1)), cat_mask(F.softmax(zt / T, dim=1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * T**2 / y.shape[0]
    pt2 = F.softmax(zt / T - 1000.0 * gt, dim=1)
    log_ps2 = F.log_softmax(zs / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * T**2 / y.shape[0]
    return ce + alpha * tckd + beta * nckd


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
@pytest.mark.parametrize("logit_std", [False, True])
def test_dkd_equals_mdistiller_and_the_logit_standardization_authors(shape, T, logit_std):
    """logit_std: the LS authors' DKD recipe multiplies alpha and beta by their KD weight 9 (tools/train.py)."""
    zs, zt, y = _inputs(shape, seed=int(T) * 13 + shape[0])
    alpha, beta = (9.0, 72.0) if logit_std else (1.0, 8.0)
    options = {"name": "dkd", "alpha": alpha, "beta": beta, "logit_std": logit_std}
    assert_same_function(_logit_loss(options, T, zt, y), lambda s: authors_dkd(s, zt, y, T, alpha, beta, logit_std), zs)


# --- Tang et al.'s synthetic teachers: the paper's targets, KL as mdistiller's kd_loss takes it ----------------

def paper_targets(kind, zt, y, T, epsilon=0.2):
    """Tang et al. 2020: ls puts 1 - epsilon on the label and spreads epsilon over the other K - 1 classes; kd_pt
    keeps the teacher's true-class probability p_t and spreads 1 - p_t; kd_sim is the teacher's mean softmax
    over the batch's examples of the same class (the batch stands in for the training set here)."""
    k = zt.shape[1]
    onehot = F.one_hot(y, k).to(D)
    p = F.softmax(zt / T, dim=1)
    if kind == "kd_sim":
        means = torch.stack([p[y == c].mean(0) if (y == c).any() else torch.full((k,), 1.0 / k, dtype=D)
                             for c in range(k)])
        return means[y], means
    mass = torch.full((len(y), 1), epsilon, dtype=D) if kind == "ls" else 1 - (p * onehot).sum(1, keepdim=True)
    return (1 - mass) * onehot + mass / (k - 1) * (1 - onehot), None


@pytest.mark.parametrize("kind", ["ls", "kd_pt", "kd_sim"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
def test_synthetic_teachers_equal_kd_against_the_papers_targets(kind, shape, T):
    from kdrun.teachers.knowledge import teacher_stats

    zs, zt, y = _inputs(shape, seed=int(T) * 17 + shape[1])
    q, class_matrix = paper_targets(kind, zt, y, T)
    stats = teacher_stats(zt, y, T, zt.shape[1])
    if kind == "kd_sim":
        assert torch.allclose(stats.class_matrix.to(D), class_matrix, rtol=1e-6), "the class matrix of the teacher"
        stats = dataclasses.replace(stats, class_matrix=class_matrix)  # the rest in float64
    method = build_method({"name": kind, "epsilon": 0.2} if kind == "ls" else {"name": kind},
                          MethodContext(T, 0.7, zt.shape[1], len(y), teacher_stats=stats))

    def authors(s):
        kl = F.kl_div(F.log_softmax(s / T, dim=1), q, reduction="none").sum(1).mean() * T**2
        return 0.3 * F.cross_entropy(s, y) + 0.7 * kl

    assert_same_function(lambda s: method(Batch(s, y, zt)).total, authors, zs)


# --- DIST ------------------------------------------------------------------------------------------

def authors_dist(zs, zt, y, T, beta, gamma):
    """hunto/DIST_KD: segmentation/losses/dist_kd.py's relations; the classification loss (image_classification_sota
    lib/models/losses/dist_kd.py) softens at tau and scales each relation by tau^2; CE at weight 1."""
    def pearson(a, b, eps=1e-8):
        a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    ps, pt = (zs / T).softmax(dim=1), (zt / T).softmax(dim=1)
    inter = 1 - pearson(ps, pt).mean()
    intra = 1 - pearson(ps.transpose(0, 1), pt.transpose(0, 1)).mean()
    return F.cross_entropy(zs, y) + T**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
def test_dist_equals_its_authors(shape, T):
    zs, zt, y = _inputs(shape, seed=int(T) * 19 + shape[0])
    assert_same_function(_logit_loss({"name": "dist"}, T, zt, y), lambda s: authors_dist(s, zt, y, T, 2.0, 2.0), zs)


# --- feature methods: their losses on random features ------------------------------------------------

FEATURE_SHAPES = [((6, 4, 8, 8), (6, 5, 8, 8)), ((9, 3, 8, 8), (9, 7, 4, 4)), ((4, 2, 4, 4), (4, 6, 8, 8))]


def _features(s_shape, t_shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*s_shape, generator=g, dtype=D), torch.randn(*t_shape, generator=g, dtype=D)


def authors_at(f_s, f_t, p=2.0):
    """RepDistiller distiller_zoo/AT.py `at_loss`: the larger map pooled to the smaller."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))

    def at(f):
        return F.normalize(f.pow(p).mean(1).view(f.size(0), -1))

    return (at(f_s) - at(f_t)).pow(2).mean()


@pytest.mark.parametrize("s_shape,t_shape", FEATURE_SHAPES)
def test_attention_transfer_equals_repdistiller(s_shape, t_shape):
    from kdrun.methods.at import at_pair

    f_s, f_t = _features(s_shape, t_shape, seed=s_shape[0])
    assert_same_function(lambda s: at_pair(s, f_t, 2.0), lambda s: authors_at(s, f_t), f_s)


def authors_pkt(output_net, target_net, eps=1e-7):
    """RepDistiller distiller_zoo/PKT.py `cosine_similarity_loss`."""
    output_net = output_net / (torch.sqrt(torch.sum(output_net**2, dim=1, keepdim=True)) + eps)
    target_net = target_net / (torch.sqrt(torch.sum(target_net**2, dim=1, keepdim=True)) + eps)
    model_similarity = (torch.mm(output_net, output_net.t()) + 1.0) / 2.0
    target_similarity = (torch.mm(target_net, target_net.t()) + 1.0) / 2.0
    model_similarity = model_similarity / torch.sum(model_similarity, dim=1, keepdim=True)
    target_similarity = target_similarity / torch.sum(target_similarity, dim=1, keepdim=True)
    return torch.mean(target_similarity * torch.log((target_similarity + eps) / (model_similarity + eps)))


def authors_rkd(student, teacher, w_d=25.0, w_a=50.0):
    """RepDistiller distiller_zoo/RKD.py `RKDLoss.forward` (the teacher's side under no_grad there: it is data)."""
    def pdist(e, eps=1e-12):
        e_square = e.pow(2).sum(dim=1)
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    def angles(e):
        norm = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(norm, norm.transpose(1, 2)).view(-1)

    t_d = pdist(teacher)
    t_d = t_d / t_d[t_d > 0].mean()
    d = pdist(student)
    d = d / d[d > 0].mean()
    return w_d * F.smooth_l1_loss(d, t_d) + w_a * F.smooth_l1_loss(angles(student), angles(teacher))


@pytest.mark.parametrize("n,s_dim,t_dim", [(8, 16, 32), (5, 7, 3), (33, 64, 64)])
def test_pkt_and_rkd_equal_repdistiller(n, s_dim, t_dim):
    from kdrun.methods.pkt import pkt_loss
    from kdrun.methods.rkd import rkd_loss

    e_s, e_t = _features((n, s_dim), (n, t_dim), seed=n)
    assert_same_function(lambda s: pkt_loss(s, e_t), lambda s: authors_pkt(s, e_t), e_s)
    assert_same_function(lambda s: rkd_loss(s, e_t, 25.0, 50.0), lambda s: authors_rkd(s, e_t), e_s)


def authors_contrast_loss(x, n_data, eps=1e-7):
    """RepDistiller crd/criterion.py `ContrastLoss.forward`: column 0 the positive, m = K negatives, P_n = 1/N."""
    bsz, m = x.shape[0], x.size(1) - 1
    pn = 1.0 / float(n_data)
    log_d1 = torch.div(x.select(1, 0), x.select(1, 0).add(m * pn + eps)).log_()
    log_d0 = torch.div(x.narrow(1, 1, m).clone().fill_(m * pn), x.narrow(1, 1, m).add(m * pn + eps)).log_()
    return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz


@pytest.mark.parametrize("bsz,k,n_data", [(4, 16, 100), (9, 50, 5000), (2, 3, 10)])
def test_crd_nce_equals_repdistiller(bsz, k, n_data):
    from kdrun.methods.crd import nce_loss

    g = torch.Generator().manual_seed(k)
    h = torch.rand(bsz, k + 1, generator=g, dtype=D) * 3 / n_data  # exp(<.,.>/tau) / Z: scores around 1/N
    assert_same_function(lambda x: nce_loss(x, n_data), lambda x: authors_contrast_loss(x, n_data).squeeze(), h)


def authors_hcl(fstudent, fteacher):
    """mdistiller/distillers/ReviewKD.py `hcl_loss` (the same in ReviewKD's CIFAR-100/model/reviewkd.py `hcl`)."""
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss, cnt, tot = F.mse_loss(fs, ft, reduction="mean"), 1.0, 1.0
        for level in [4, 2, 1]:
            if level >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (level, level)),
                                     F.adaptive_avg_pool2d(ft, (level, level)), reduction="mean") * cnt
            tot += cnt
        loss_all = loss_all + loss / tot
    return loss_all


@pytest.mark.parametrize("sizes", [(8, 4, 1), (32, 16, 8, 1), (7, 3)])
def test_reviewkd_hcl_equals_the_authors(sizes):
    from kdrun.methods.reviewkd import hcl

    g = torch.Generator().manual_seed(len(sizes))
    outs = torch.cat([torch.randn(3, 4, s, s, generator=g, dtype=D).flatten() for s in sizes])
    targets = [torch.randn(3, 4, s, s, generator=g, dtype=D) for s in sizes]

    def split(flat):
        pieces, at = [], 0
        for s in sizes:
            pieces.append(flat[at:at + 3 * 4 * s * s].view(3, 4, s, s))
            at += 3 * 4 * s * s
        return pieces

    assert_same_function(lambda x: hcl(split(x), targets), lambda x: authors_hcl(split(x), targets), outs)
