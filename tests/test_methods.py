"""The method registry and each method's loss against a hand computation on small tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdrun.core.errors import ConfigError
from kdrun.methods.at import at_pair
from kdrun.methods.base import Batch, MethodContext, build_method, registered
from kdrun.methods.crd import CRD, NegativeSampler, nce_loss
from kdrun.methods.losses import KDLoss
from kdrun.methods.mlkd import MLKD, median_masks
from kdrun.methods.pairs import methods_for
from kdrun.methods.params import PARAMS, CRDParams, parse_params
from kdrun.methods.pkt import pkt_loss
from kdrun.methods.reviewkd import ABF, hcl
from kdrun.methods.rkd import rkd_loss
from kdrun.models import build_model
from kdrun.run.config import method_names

D = torch.float64


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_conf_loss_yaml_has_a_registered_method_and_back():
    assert set(method_names()) == set(registered()) == set(PARAMS)


def test_a_methods_options_are_typed_by_its_own_schema():
    assert parse_params({"name": "crd", "negatives": 64}).negatives == 64
    with pytest.raises(ConfigError, match="loss 'kd' has no option beta; its options: ce_weight, kd_weight, logit_std"):
        parse_params({"name": "kd", "beta": 2.0})
    with pytest.raises(ConfigError, match="loss.beta must be >= 0"):
        parse_params({"name": "dkd", "beta": -1.0})
    with pytest.raises(ConfigError, match="invalid value for loss.negatives"):
        parse_params({"name": "crd", "negatives": "many"})


def test_kd_family_weights_come_from_alpha_or_explicitly_never_both():
    from omegaconf import OmegaConf

    from kdrun.commands.distill import loss_weights
    from kdrun.methods.params import DEFAULT_ALPHA, resolved_alpha

    classic, explicit = parse_params({"name": "kd"}), parse_params({"name": "ls", "ce_weight": 0.1, "kd_weight": 9})
    assert classic.weights(None) == (1 - DEFAULT_ALPHA, DEFAULT_ALPHA) and classic.weights(0.7) == (1 - 0.7, 0.7)
    assert explicit.weights(None) == (0.1, 9.0)
    assert (resolved_alpha(None, classic), resolved_alpha(0.3, classic), resolved_alpha(None, explicit)) == (0.9, 0.3, None)
    assert resolved_alpha(None, parse_params({"name": "dkd"})) == DEFAULT_ALPHA
    both = {"name": "kd_sim", "ce_weight": 0.1, "kd_weight": 9}
    with pytest.raises(ConfigError, match=r"^alpha=0.5 and loss.ce_weight/loss.kd_weight both weight the loss"):
        parse_params(both, alpha=0.5)
    with pytest.raises(ConfigError, match="alpha=0.0 and loss.ce_weight"):
        build_method(both, MethodContext(4.0, 0.0, 10, 100))
    run = OmegaConf.create({"alpha": None, "loss": {"name": "kd", "ce_weight": 0.1, "kd_weight": 9.0}})
    assert loss_weights(run) == (0.1, 9.0), "a stacked sweep's KD jobs take the same weights"


# --- logit standardisation and MLKD --------------------------------------------------------------

def _zscore(row):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (std + 1e-7) for v in row]


def _softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _logits(n=6, k=5, seed=0):
    g = _g(seed)
    return torch.randn(n, k, generator=g, dtype=D), 3 * torch.randn(n, k, generator=g, dtype=D), torch.randint(0, k, (n,), generator=g)


def test_logit_std_z_scores_both_logits_in_the_kd_term_only():
    zs, zt, y = _logits()
    T, alpha = 2.0, 0.9
    kl = sum(_kl(_softmax(_zscore(t), T), _softmax(_zscore(s), T)) for s, t in zip(zs.tolist(), zt.tolist())) / len(y)
    ce = F.cross_entropy(zs, y).item()
    parts = KDLoss(T, alpha, logit_std=True)(zs, y, zt)
    assert parts.total.item() == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-9)
    assert parts.ce.item() == pytest.approx(ce, rel=1e-12)


def test_mlkd_levels_and_masks_match_a_hand_computation():
    zs, zt, y = _logits(n=8, k=4, seed=1)
    temps = [4.0, 2.0]
    ins = bc = cc = 0.0
    for T in temps:
        ps = [_softmax(r, T) for r in zs.tolist()]
        pt = [_softmax(r, T) for r in zt.tolist()]
        ins += T * T * sum(_kl(t, s) for s, t in zip(ps, pt)) / len(ps)
        n, k = len(ps), len(ps[0])
        bc += sum((sum(pt[i][c] * pt[j][c] for c in range(k)) - sum(ps[i][c] * ps[j][c] for c in range(k))) ** 2
                  for i in range(n) for j in range(n)) / n
        cc += sum((sum(pt[i][a] * pt[i][b] for i in range(n)) - sum(ps[i][a] * ps[i][b] for i in range(n))) ** 2
                  for a in range(k) for b in range(k)) / k
    probs = [_softmax(r) for r in zt.tolist()]
    conf = sorted(max(p) for p in probs)
    median = (conf[3] + conf[4]) / 2
    share = sum(max(p) <= median for p in probs) / len(probs)
    class_conf = sorted(sum(p[c] for p in probs) for c in range(4))
    class_share = sum(sum(p[c] for p in probs) <= (class_conf[1] + class_conf[2]) / 2 for c in range(4)) / 4
    got_share, got_class_share = median_masks(zt)
    assert (got_share.item(), got_class_share.item()) == pytest.approx((share, class_share))
    method = MLKD(temps, ce_weight=0.1, kd_weight=0.9, logit_std=False)
    got_ins, got_bc, got_cc = method.levels(zs, zt)
    assert (got_ins.item(), got_bc.item(), got_cc.item()) == pytest.approx((ins, bc, cc), rel=1e-9)
    total = method(Batch(zs, y, zt)).total.item()
    expected = 0.1 * 2 * F.cross_entropy(zs, y).item() + 0.9 * (ins * (1 + share) + cc * class_share + bc * share)
    assert total == pytest.approx(expected, rel=1e-9)


# --- feature methods -----------------------------------------------------------------------------

def test_attention_transfer_matches_a_hand_computation_and_pools_the_larger_map():
    g = _g(2)
    f_s, f_t = torch.randn(2, 3, 4, 4, generator=g, dtype=D), torch.randn(2, 5, 2, 2, generator=g, dtype=D)
    pooled = F.avg_pool2d(f_s, 2)  # 4x4 -> the teacher's 2x2

    def attention(f):
        maps = []
        for example in f.tolist():
            a = [sum(example[c][i][j] ** 2 for c in range(len(example))) / len(example)
                 for i in range(len(example[0])) for j in range(len(example[0][0]))]
            norm = math.sqrt(sum(v * v for v in a))
            maps.append([v / norm for v in a])
        return maps

    a_s, a_t = attention(pooled), attention(f_t)
    expected = sum((s - t) ** 2 for rs, rt in zip(a_s, a_t) for s, t in zip(rs, rt)) / 8
    assert at_pair(f_s, f_t, 2.0).item() == pytest.approx(expected, rel=1e-9)


def test_rkd_matches_a_hand_computation_of_distances_and_angles():
    g = _g(3)
    e_s, e_t = torch.randn(4, 3, generator=g, dtype=D), torch.randn(4, 5, generator=g, dtype=D)

    def huber(a, b):
        return sum(0.5 * (x - y) ** 2 if abs(x - y) < 1 else abs(x - y) - 0.5 for x, y in zip(a, b)) / len(a)

    def distances(e):
        rows = e.tolist()
        d = [math.dist(a, b) for a in rows for b in rows]
        mean = sum(v for v in d if v > 0) / sum(1 for v in d if v > 0)
        return [v / mean for v in d]

    def angles(e):
        rows, out = e.tolist(), []
        for i in range(len(rows)):
            for j in range(len(rows)):
                for k in range(len(rows)):
                    u = [a - b for a, b in zip(rows[i], rows[j])]
                    v = [a - b for a, b in zip(rows[k], rows[j])]
                    nu, nv = math.sqrt(sum(x * x for x in u)) or 1, math.sqrt(sum(x * x for x in v)) or 1
                    out.append(sum(a * b for a, b in zip(u, v)) / nu / nv)
        return out

    expected = 25 * huber(distances(e_s), distances(e_t)) + 50 * huber(angles(e_s), angles(e_t))
    assert rkd_loss(e_s, e_t, 25.0, 50.0).item() == pytest.approx(expected, rel=1e-6)


def test_pkt_matches_a_hand_computation():
    g = _g(4)
    e_s, e_t = torch.randn(3, 4, generator=g, dtype=D), torch.randn(3, 6, generator=g, dtype=D)

    def probabilities(e):
        rows = [[x / math.sqrt(sum(v * v for v in r)) for x in r] for r in e.tolist()]
        sim = [[(sum(a * b for a, b in zip(r, q)) + 1) / 2 for q in rows] for r in rows]
        return [[v / sum(row) for v in row] for row in sim]

    p_s, p_t = probabilities(e_s), probabilities(e_t)
    expected = sum(t * math.log((t + 1e-7) / (s + 1e-7)) for rs, rt in zip(p_s, p_t) for s, t in zip(rs, rt)) / 9
    assert pkt_loss(e_s, e_t).item() == pytest.approx(expected, rel=1e-6)


def test_nce_loss_matches_a_hand_computation():
    h = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]], dtype=D)
    n, m = 10, 2
    expected = -sum(math.log(r[0] / (r[0] + m / n + 1e-7)) + sum(math.log((m / n) / (v + m / n + 1e-7)) for v in r[1:])
                    for r in h.tolist()) / 2
    assert nce_loss(h, n).item() == pytest.approx(expected, rel=1e-9)


def test_crd_negatives_are_other_classes_and_cover_them_all():
    labels = torch.tensor([0, 1, 0, 2, 1, 2, 2, 0])
    sampler = NegativeSampler(labels, 3)
    torch.manual_seed(0)
    drawn = sampler(torch.tensor([0, 2]), 2000)
    assert (labels[drawn[0]] != 0).all() and (labels[drawn[1]] != 2).all()
    assert set(drawn[0].tolist()) == {1, 3, 4, 5, 6} and set(drawn[1].tolist()) == {0, 1, 2, 4, 7}


def test_crd_negatives_are_distinct_and_uniform_when_k_fits_the_pool():
    """RepDistiller draws np.random.choice(cls_negative[target], k, replace=k > len(cls_negative[target]))."""
    labels = torch.arange(40) % 4  # each class's pool of negatives: 30 examples
    sampler = NegativeSampler(labels, 4)
    torch.manual_seed(0)
    anchors = labels[:8]
    for k in (5, 30):
        for row, c in zip(sampler(anchors, k), anchors.tolist()):
            assert len(set(row.tolist())) == k and (labels[row] != c).all()
    counts = torch.bincount(sampler(torch.zeros(3000, dtype=torch.long), 5).flatten(), minlength=40)
    pool = labels != 0
    assert (counts[~pool] == 0).all() and counts[pool].min() > 0.8 * 500 and counts[pool].max() < 1.2 * 500


def test_crd_draws_with_replacement_only_for_anchors_whose_pool_is_smaller_than_k():
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])  # class 0's pool: 8 examples, class 1's: 2
    torch.manual_seed(0)
    drawn = NegativeSampler(labels, 2)(torch.tensor([0] * 20 + [1]), 5)
    for row in drawn[:20]:
        assert len(set(row.tolist())) == 5 and set(row.tolist()) <= set(range(2, 10))
    assert set(drawn[20].tolist()) == {0, 1}, "5 draws from a pool of 2 repeat, as np.random.choice(replace=True)"


def _crd(num_train=12, dim=4, negatives=5):
    torch.manual_seed(0)
    student = build_model("mlp", 3, (1, 8), {"hidden": [6]})
    teacher = build_model("cnn1d", 3, (1, 8), {"channels": 4, "layers": 2})
    labels = torch.arange(num_train) % 3
    ctx = MethodContext(4.0, 0.9, 3, num_train, student, teacher, torch.randn(2, 1, 8), labels)
    return CRD(CRDParams(name="crd", feat_dim=dim, negatives=negatives), ctx), student, teacher, labels


def test_crd_scores_and_memory_update_match_a_hand_computation():
    crd, _, _, labels = _crd()
    e_s, e_t = torch.randn(3, 6), torch.randn(3, 8)
    index = torch.tensor([4, 0, 7])
    memory_s, memory_t = crd.memory_s.clone(), crd.memory_t.clone()
    torch.manual_seed(1)
    negatives = crd.sampler(labels[index], crd.k)
    torch.manual_seed(1)
    loss = crd.contrast(e_s, e_t, index, labels[index])

    g_s = F.normalize(crd.embed_s.linear(e_s), dim=1).detach()
    g_t = F.normalize(crd.embed_t.linear(e_t), dim=1).detach()
    idx = torch.cat([index[:, None], negatives], 1)
    raw_s = torch.stack([torch.exp(memory_t[idx[i]] @ g_s[i] / 0.07) for i in range(3)])
    raw_t = torch.stack([torch.exp(memory_s[idx[i]] @ g_t[i] / 0.07) for i in range(3)])
    z_s, z_t = raw_s.mean() * 12, raw_t.mean() * 12  # fixed on the first batch
    assert torch.allclose(crd.z, torch.stack([z_s, z_t]))
    expected = nce_loss(raw_s / z_s, 12) + nce_loss(raw_t / z_t, 12)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for memory, before, g in ((crd.memory_s, memory_s, g_s), (crd.memory_t, memory_t, g_t)):
        for row, i in enumerate(index.tolist()):
            mixed = 0.5 * before[i] + 0.5 * g[row]
            assert torch.allclose(memory[i], mixed / mixed.norm(), atol=1e-6)
        untouched = [i for i in range(12) if i not in index.tolist()]
        assert torch.equal(memory[untouched], before[untouched])


def test_crd_caps_its_negatives_at_the_training_set_size():
    crd, *_ = _crd(num_train=12, negatives=16384)
    assert crd.k == 11


def test_reviewkd_fusion_matches_its_formula():
    torch.manual_seed(0)
    abf = ABF(2, in_channels=3, mid_channels=4, out_channels=5, fuse=True).eval()
    x, residual = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)
    out, fused = abf(x, residual, (8, 8))
    u = abf.conv1(x)
    up = residual.repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest 2x
    att = abf.att_conv[0]
    logits = torch.einsum("oc,nchw->nohw", att.weight[:, :, 0, 0], torch.cat([u, up], 1)) + att.bias[None, :, None, None]
    z = torch.sigmoid(logits)
    expected = u * z[:, :1] + up * z[:, 1:]
    expected = expected.repeat_interleave(2, 2).repeat_interleave(2, 3)  # to the teacher's 8x8
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.allclose(out, abf.conv2(expected), atol=1e-6)


def test_hcl_matches_a_hand_computation():
    g = _g(5)
    o, t = torch.randn(2, 3, 4, 4, generator=g, dtype=D), torch.randn(2, 3, 4, 4, generator=g, dtype=D)
    mse = lambda a, b: ((a - b) ** 2).mean().item()  # noqa: E731
    # levels 4 (skipped: not smaller than 4), 2 (weight 1/2), 1 (weight 1/4)
    expected = (mse(o, t) + mse(F.avg_pool2d(o, 2), F.avg_pool2d(t, 2)) / 2 + mse(o.mean((2, 3)), t.mean((2, 3))) / 4) / 1.75
    assert hcl([o], [t]).item() == pytest.approx(expected, rel=1e-9)


# --- every method builds on MNIST-1D models and takes a step ---------------------------------------

@pytest.mark.parametrize("name", methods_for("cnn1d", "cnn1d"))  # all but deit (needs a distillation token)
def test_every_method_builds_and_returns_finite_parts_with_gradients(name):
    torch.manual_seed(0)
    student = build_model("cnn1d", 10, (1, 40), {"channels": 4})
    teacher = build_model("cnn1d", 10, (1, 40), {"channels": 8, "layers": 4})
    x, y = torch.randn(16, 1, 40), torch.arange(16) % 10
    from kdrun.teachers.knowledge import teacher_stats
    stats = teacher_stats(teacher(x).detach(), y, 4.0, 10)
    method = build_method({"name": name}, MethodContext(4.0, 0.9, 10, 16, student, teacher, x[:2], y, stats))
    from kdrun.models.stages import tap
    with tap(student, list(method.student_stages)) as fs:
        logits = student(x)
    with torch.no_grad(), tap(teacher, list(method.teacher_stages)) as ft:
        t_logits = teacher(x)
    parts = method(Batch(logits, y, t_logits, torch.arange(16), dict(fs), dict(ft)))
    assert all(torch.isfinite(p) for p in parts)
    parts.total.backward()
    assert student[0].weight.grad is not None and student[0].weight.grad.abs().sum() > 0
    for p in method.parameters():
        assert p.grad is not None, f"{name}: a trainable part got no gradient"


# --- trainable parts are optimised, saved and resumed bitwise --------------------------------------

@pytest.mark.parametrize("name", ["crd", "fitnet", "reviewkd"])
def test_a_methods_trainable_parts_resume_bitwise(tmp_path, name):
    from kdrun.core.errors import Interrupted
    from kdrun.data import load_dataset
    from kdrun.train.engine import fit
    from kdrun.train.recipe import Recipe
    from kdrun.train.state import load_state, save_state

    torch.set_num_threads(1)
    data = load_dataset("fake", "/unused", False, False, {"shape": [1, 16], "num_train": 64, "num_test": 16})
    torch.manual_seed(0)
    teacher = build_model("cnn1d", 10, (1, 16), {"channels": 6})
    recipe = Recipe(epochs=2, batch_size=16, seed=2)

    def fresh(seed):
        torch.manual_seed(seed)
        student = build_model("cnn1d", 10, (1, 16), {"channels": 3})
        ctx = MethodContext(4.0, 0.9, 10, 64, student, teacher, data.x_train[:2], data.y_train)
        return student, build_method({"name": name, "negatives": 8} if name == "crd" else {"name": name}, ctx)

    student, method = fresh(0)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    expected = fit(student, data, recipe, torch.device("cpu"), loss=method, teacher=teacher)
    assert any(not torch.equal(v, method.state_dict()[k]) for k, v in before.items()), "the method's parts train"

    path = tmp_path / "last.pt"
    stopped, stopped_method = fresh(0)
    steps = iter(range(100))
    with pytest.raises(Interrupted):
        fit(stopped, data, recipe, torch.device("cpu"), loss=stopped_method, teacher=teacher,
            checkpoint=lambda s: save_state(path, s), stop=lambda: next(steps) >= 5)
    resumed, resumed_method = fresh(7)  # other initial weights: everything must come from last.pt
    history = fit(resumed, data, recipe, torch.device("cpu"), loss=resumed_method, teacher=teacher, state=load_state(path))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(history) == drop(expected)
    for ours, theirs in ((resumed, student), (resumed_method, method)):
        for key, tensor in theirs.state_dict().items():
            assert torch.equal(tensor, ours.state_dict()[key]), key


def test_dist_matches_a_hand_computation_of_both_relations():
    from kdrun.methods.dist import DIST

    zs, zt, y = _logits(n=5, k=4, seed=6)
    T = 2.0
    ps, pt = [_softmax(r, T) for r in zs.tolist()], [_softmax(r, T) for r in zt.tolist()]

    def rho(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        num = sum((x - ma) * (z - mb) for x, z in zip(a, b))
        return num / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((z - mb) ** 2 for z in b)))

    inter = 1 - sum(rho(a, b) for a, b in zip(ps, pt)) / 5
    intra = 1 - sum(rho([r[c] for r in ps], [r[c] for r in pt]) for c in range(4)) / 4
    parts = DIST(T, beta=2.0, gamma=3.0, logit_std=False)(Batch(zs, y, zt))
    assert parts.kd.item() == pytest.approx(T * T * (2 * inter + 3 * intra), rel=1e-6)
    assert parts.total.item() == pytest.approx(F.cross_entropy(zs, y).item() + parts.kd.item(), rel=1e-9)
