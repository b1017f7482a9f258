"""Distillation losses. Each returns the total and its parts, so runs can log both terms."""

from __future__ import annotations

from typing import NamedTuple, Optional, Protocol

import torch
import torch.nn.functional as F


class LossParts(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


class Loss(Protocol):
    """A plain logit loss: student logits, hard labels, the teacher's logits (or None). The engine wraps it
    as a `kdrun.methods.Method` (`as_method`)."""

    def __call__(self, student_logits: torch.Tensor, targets: torch.Tensor,
                 teacher_logits: Optional[torch.Tensor]) -> LossParts: ...


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor,
                  teacher_logits: Optional[torch.Tensor] = None) -> LossParts:
    """Hard labels alone: the teacher's and the baseline student's loss."""
    ce = F.cross_entropy(student_logits, targets)
    return LossParts(ce, ce, torch.zeros_like(ce))


def smoothed_cross_entropy(epsilon: float) -> Loss:
    """CE against (1 - epsilon) onehot + epsilon / K (Szegedy et al. 2016), for training a smoothed teacher."""

    def loss(student_logits: torch.Tensor, targets: torch.Tensor,
             teacher_logits: Optional[torch.Tensor] = None) -> LossParts:
        ce = F.cross_entropy(student_logits, targets, label_smoothing=epsilon)
        return LossParts(ce, ce, torch.zeros_like(ce))

    return loss


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row of logits (Sun et al. 2024, "Logit Standardization in Knowledge Distillation", CVPR):
    (z - mean(z)) / (std(z) + 1e-7), so the student matches the teacher's logit *shape*, not its scale."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + 1e-7)


def maybe_standardize(logits: Optional[torch.Tensor], on: bool) -> Optional[torch.Tensor]:
    return standardize(logits) if on and logits is not None else logits


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                    reduction="batchmean", log_target=True)


class KDLoss:
    """Hinton et al. (2015), "Distilling the Knowledge in a Neural Network":

        loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(y, z_s)

    **alpha weights the distillation term** (alpha=0: hard labels only; alpha=1: soft
    targets only). RepDistiller/mdistiller's "CE 0.1, KD 0.9" is alpha=0.9; torchdistill
    puts alpha on the CE term instead. The soft term's gradient scales as 1/T^2, so the
    T^2 factor keeps its weight comparable across temperatures. The teacher's logits are
    detached: the teacher never receives a gradient. `logit_std` z-scores both logits in the KD
    term only (see `standardize`); CE always sees the raw logits.

    `ce_weight` gives the explicit form papers write, `ce_weight * CE + alpha * T^2 * KL` with any
    weights >= 0 (logit standardization: CE 0.1, KD 9); unset, it is 1 - alpha.
    """

    def __init__(self, T: float, alpha: float, logit_std: bool = False, ce_weight: Optional[float] = None) -> None:
        self.T, self.alpha, self.logit_std = T, alpha, logit_std
        self.ce_weight = 1 - alpha if ce_weight is None else ce_weight

    def __call__(self, student_logits: torch.Tensor, targets: torch.Tensor,
                 teacher_logits: torch.Tensor) -> LossParts:
        ce = F.cross_entropy(student_logits, targets)
        zs, zt = maybe_standardize(student_logits, self.logit_std), maybe_standardize(teacher_logits.detach(), self.logit_std)
        kd = soft_kl(zs, zt, self.T) * self.T**2
        return LossParts(self.alpha * kd + self.ce_weight * ce, ce, kd)


# --- Tang et al. (2020)'s knowledge levels, and decoupled KD ------------------------------------
#
# Tang, Shivanna, Zhao, Lin, Singh, Chi, Jain (2020), "Understanding and Improving Knowledge
# Distillation", arXiv:2002.03532, read the teacher's soft targets at three levels: knowledge of
# the "universe" (a label-smoothing-like regulariser), domain knowledge (class relationships) and
# instance-specific knowledge (how hard the teacher finds each example, which rescales that
# example's gradient). The synthetic teachers below keep one level and drop the others; they are
# used exactly like a real teacher's softened prediction, so only the target q changes:
#
#     loss = alpha * T^2 * KL(q || softmax(z_s/T)) + (1 - alpha) * CE(y, z_s)


def smoothed_targets(labels: torch.Tensor, epsilon: torch.Tensor | float, num_classes: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1 - epsilon on the true class, epsilon spread evenly over the other K - 1 classes.

    `epsilon` is the non-target mass: a float, or one value per example (kd_pt). Szegedy et
    al.'s (1 - e) * onehot + e / K is this with epsilon = e (K - 1) / K. `dtype`: the student's precision
    when finer than float32 (float64 checks against the papers' formulas).
    """
    epsilon = torch.as_tensor(epsilon, dtype=dtype, device=labels.device).expand(len(labels))
    rest = (epsilon / (num_classes - 1)).unsqueeze(1)
    targets = rest.expand(len(labels), num_classes).clone()
    return targets.scatter_(1, labels.unsqueeze(1), (1 - epsilon).unsqueeze(1))


def class_softmax(z: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(log_)softmax over the last (class) dimension, computed along a strided dimension instead: torch's
    CPU kernel for a short contiguous last dimension (10 classes) is ~10x slower than its strided one.
    Used where many rows at once make it count (a stacked group's loss)."""
    softmax = F.log_softmax if log else F.softmax
    return softmax(z.transpose(-1, -2), dim=-2).transpose(-1, -2)


def true_class_prob(logits: torch.Tensor, labels: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """softmax(z/T)[y] per example: how sure a model is of the (given) label (at least in float32: bf16 logits
    are widened)."""
    return F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / T, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)


def target_kl(student_logits: torch.Tensor, targets: torch.Tensor, T: float) -> torch.Tensor:
    """KL(q || softmax(z_s/T)) for probability targets q (zeros allowed), batchmean."""
    return F.kl_div(F.log_softmax(student_logits / T, dim=1), targets, reduction="batchmean")


class SyntheticTeacherLoss:
    """KD against a synthetic target q(logits_t, y) instead of the teacher's softmax(z_t/T):

        loss = alpha * T^2 * KL(q || softmax(z_s/T)) + (1 - alpha) * CE(y, z_s)

    The subclasses say which q; alpha, ce_weight and T mean what they mean in `KDLoss`.
    """

    def __init__(self, T: float, alpha: float, num_classes: int, logit_std: bool = False,
                 ce_weight: Optional[float] = None) -> None:
        self.T, self.alpha, self.num_classes, self.logit_std = T, alpha, num_classes, logit_std
        self.ce_weight = 1 - alpha if ce_weight is None else ce_weight

    def targets(self, labels: torch.Tensor, teacher_logits: Optional[torch.Tensor],
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, student_logits: torch.Tensor, labels: torch.Tensor,
                 teacher_logits: Optional[torch.Tensor]) -> LossParts:
        ce = F.cross_entropy(student_logits, labels)
        teacher_logits = None if teacher_logits is None else teacher_logits.detach()
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        q = self.targets(labels, maybe_standardize(teacher_logits, self.logit_std), dtype)
        kd = target_kl(maybe_standardize(student_logits, self.logit_std), q, self.T) * self.T**2
        return LossParts(self.alpha * kd + self.ce_weight * ce, ce, kd)


class LabelSmoothingLoss(SyntheticTeacherLoss):
    """`ls`: knowledge of the "universe" alone (Szegedy et al. 2016, "Rethinking the Inception
    Architecture", label smoothing; Tang et al. 2020, Sec. 3.1):

        q = (1 - epsilon) * onehot(y) + epsilon / (K - 1) * (1 - onehot(y))

    the same target for every example of a class, no class relationships. By default epsilon is
    the teacher's average non-target mass at temperature T on the training set, so ls differs
    from KD only in *how* that mass is spread. At T = 1, alpha = 1 its gradient is plain label
    smoothing's: KL(q || p) = CE(q, p) - H(q).
    """

    def __init__(self, T: float, alpha: float, num_classes: int, epsilon: float, logit_std: bool = False,
                 ce_weight: Optional[float] = None) -> None:
        super().__init__(T, alpha, num_classes, logit_std, ce_weight)
        self.epsilon = epsilon

    def targets(self, labels: torch.Tensor, teacher_logits: Optional[torch.Tensor],
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return smoothed_targets(labels, self.epsilon, self.num_classes, dtype)


class TrueClassProbLoss(SyntheticTeacherLoss):
    """`kd_pt`: instance-specific knowledge without class relationships (Tang et al. 2020, Sec. 4):

        p_t = softmax(z_t/T)[y],   q = p_t * onehot(y) + (1 - p_t) / (K - 1) * (1 - onehot(y))

    keeps how sure the teacher is of each example (so its gradient rescaling) and spreads the
    rest uniformly, erasing which wrong classes the teacher found plausible.
    """

    def targets(self, labels: torch.Tensor, teacher_logits: Optional[torch.Tensor],
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        mass = 1 - true_class_prob(teacher_logits, labels, self.T)
        return smoothed_targets(labels, mass, self.num_classes, dtype)


class ClassSimilarityLoss(SyntheticTeacherLoss):
    """`kd_sim`: domain knowledge without instance-specific knowledge (Tang et al. 2020, Sec. 3.2):

        M[c] = mean of softmax(z_t/T) over the training examples of true class c,   q = M[y]

    the teacher's class-relationship matrix: every example of a class gets the same target,
    which carries which classes resemble which, but nothing about the example itself.
    """

    def __init__(self, T: float, alpha: float, class_matrix: torch.Tensor, logit_std: bool = False,
                 ce_weight: Optional[float] = None) -> None:
        super().__init__(T, alpha, class_matrix.shape[0], logit_std, ce_weight)
        self.class_matrix = class_matrix

    def targets(self, labels: torch.Tensor, teacher_logits: Optional[torch.Tensor],
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.class_matrix.to(labels.device)[labels]


class DKDLoss:
    """`dkd`: decoupled knowledge distillation (Zhao, Cui, Song, Qiu, Liang 2022, "Decoupled
    Knowledge Distillation", CVPR), with the paper's (and mdistiller's) weighting:

        b = [p_y, 1 - p_y]  (target vs all non-target classes, softmax at T)
        p^ = softmax over the non-target classes only, at T
        TCKD = KL(b_t || b_s),  NCKD = KL(p^_t || p^_s)
        loss = CE(y, z_s) + w(epoch) * T^2 * (alpha * TCKD + beta * NCKD)

    Classic KD is TCKD + (1 - p_y^t) NCKD: its non-target term is suppressed exactly where the
    teacher is confident; DKD weights it by beta instead (8 on CIFAR-100). `warmup` epochs ramp
    w linearly from 1/warmup to 1 (mdistiller: 20); 0 means no ramp. `kd` in the parts is the
    weighted KD term (alpha * TCKD + beta * NCKD) * T^2.
    """

    def __init__(self, T: float, alpha: float = 1.0, beta: float = 8.0, warmup: int = 0,
                 logit_std: bool = False) -> None:
        self.T, self.alpha, self.beta, self.warmup, self.logit_std = T, alpha, beta, warmup, logit_std
        self.epoch = 1

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def weight(self) -> float:
        return min(self.epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0

    def __call__(self, student_logits: torch.Tensor, labels: torch.Tensor,
                 teacher_logits: torch.Tensor) -> LossParts:
        ce = F.cross_entropy(student_logits, labels)
        zs, zt = maybe_standardize(student_logits, self.logit_std), maybe_standardize(teacher_logits.detach(), self.logit_std)
        tckd, nckd = dkd_terms(zs, zt, labels, self.T)
        kd = (self.alpha * tckd + self.beta * nckd) * self.T**2
        return LossParts(ce + self.weight() * kd, ce, kd)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of Zhao et al. 2022, each batchmean and without the T^2 factor.

    Computed in log space: the binary [p_y, 1 - p_y] comes from logsumexps, never from
    `1 - p_y`, which cancels to 0 in float32 once a model is confident (a target margin of
    about 17 T) and then loses TCKD's value and gradient (mdistiller's `torch.log(1 - p_y)`
    gives -inf or the rounding error there).
    """
    mask = F.one_hot(labels, student_logits.shape[1]).bool()
    log_bs, log_bt = log_target_vs_rest(student_logits / T, mask), log_target_vs_rest(teacher_logits / T, mask)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(1).mean()
    # Non-target distributions: the target logit pushed to -inf before the softmax.
    log_hat_s = F.log_softmax(student_logits / T - 1e9 * mask, dim=1)
    log_hat_t = F.log_softmax(teacher_logits / T - 1e9 * mask, dim=1)
    hat_t = log_hat_t.exp()
    nckd = (hat_t * (log_hat_t - log_hat_s)).masked_fill(mask, 0).sum(1).mean()
    return tckd, nckd


def log_target_vs_rest(scaled_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log [p_y, 1 - p_y] of softmax(scaled_logits), (N, 2): the target's log-probability and the
    non-target classes' log-mass, each a logsumexp minus the logsumexp over all classes."""
    log_total = torch.logsumexp(scaled_logits, dim=1, keepdim=True)
    log_target = torch.logsumexp(scaled_logits.masked_fill(~mask, float("-inf")), dim=1, keepdim=True)
    log_rest = torch.logsumexp(scaled_logits.masked_fill(mask, float("-inf")), dim=1, keepdim=True)
    return torch.cat([log_target, log_rest], dim=1) - log_total
