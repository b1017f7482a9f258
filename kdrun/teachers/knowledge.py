"""What a teacher knows, in numbers: soft predictions at a temperature, the class-relationship
matrix, calibration and entropy, and the per-example gradient-rescaling probe.

Plain tensors in, tensors or floats out; no config and no files (commands do those).
Background: Hinton et al. (2015) for dark knowledge and temperature; Tang et al. (2020),
"Understanding and Improving Knowledge Distillation", for the three levels (universe,
domain, instance) and the gradient-rescaling view; Guo et al. (2017) for ECE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods.losses import true_class_prob
from kdrun.train.evaluate import predict


@dataclass(frozen=True)
class TeacherStats:
    """The teacher on the training set at temperature T: what ls and kd_sim are built from."""

    T: float
    num_classes: int
    class_matrix: torch.Tensor  # (K, K): row c = mean softmax(z_t/T) over examples labelled c
    epsilon: float  # mean non-target mass at T = 1 - mean p_t


def class_matrix(logits: torch.Tensor, labels: torch.Tensor, T: float, num_classes: int) -> torch.Tensor:
    """Mean soft prediction at T per true class; a class with no example gets the uniform row."""
    probs = F.softmax(logits.float() / T, dim=1)
    sums = torch.zeros(num_classes, num_classes, device=logits.device).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).unsqueeze(1).float()
    uniform = torch.full_like(sums, 1 / num_classes)
    return torch.where(counts > 0, sums / counts.clamp_min(1), uniform)


def teacher_stats(logits: torch.Tensor, labels: torch.Tensor, T: float, num_classes: int) -> TeacherStats:
    epsilon = 1 - true_class_prob(logits, labels, T).mean().item()
    return TeacherStats(T, num_classes, class_matrix(logits, labels, T, num_classes).cpu(), epsilon)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |accuracy - confidence| * bin share."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)
    ece = torch.zeros((), device=probs.device)
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return ece.item()


def mean_entropy(probs: torch.Tensor) -> float:
    """Mean Shannon entropy in nats (log K for a uniform prediction)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(1).mean().item()


def calibration_by_temperature(logits: torch.Tensor, labels: torch.Tensor,
                               temperatures: list[float]) -> dict[str, dict[str, float]]:
    """ECE (15 bins) and mean entropy of softmax(z/T) at each T; accuracy does not depend on T."""
    result = {}
    for T in temperatures:
        probs = F.softmax(logits.float() / T, dim=1)
        result[f"{T:g}"] = {"ece": expected_calibration_error(probs, labels),
                            "mean_entropy": mean_entropy(probs),
                            "mean_true_class_prob": true_class_prob(logits, labels, T).mean().item()}
    return result


# --- gradient rescaling (Tang et al. 2020, Sec. 3.3) ---------------------------------------------

def ce_logit_grad_norm(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example ||d CE / d z|| = ||softmax(z) - onehot(y)||, over the last (class) dimension."""
    return (F.softmax(logits.float(), dim=-1) - F.one_hot(labels, logits.shape[-1])).norm(dim=-1)


def kd_logit_grad_norm(logits: torch.Tensor, teacher_logits: torch.Tensor, T: float | torch.Tensor) -> torch.Tensor:
    """Per-example ||d (T^2 KL(softmax(z_t/T) || softmax(z/T))) / d z|| = T ||softmax(z/T) - softmax(z_t/T)||.

    `T` may be a (J, 1, 1) tensor for (J, N, C) logits: several students, each at its own temperature.
    """
    return (T * (F.softmax(logits.float() / T, dim=-1) - F.softmax(teacher_logits.float() / T, dim=-1))).norm(dim=-1)


def ranks(values: torch.Tensor) -> torch.Tensor:
    """0..n-1 by value; tied values share their average rank (as in Spearman's definition)."""
    ordered, order = values.sort()
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() + 1) / 2
    result = torch.empty(len(values), dtype=torch.float64, device=values.device)
    result[order] = average[inverse]
    return result


def _centred_ranks(values: torch.Tensor) -> torch.Tensor:
    r = ranks(values)
    return r - r.mean()


def spearman_rows(rows: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Spearman's rank correlation of each row of `rows` (J, N) with `b` (N,); nan where a side is constant."""
    ra, rb = torch.stack([_centred_ranks(a) for a in rows]), _centred_ranks(b)
    return [float("nan") if d == 0 else n / d
            for n, d in zip((ra @ rb).tolist(), (ra.norm(dim=1) * rb.norm()).tolist())]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's on the ranks; nan if either side is constant."""
    return spearman_rows(a.unsqueeze(0), b)[0]


def grad_ratio_by_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                          temperatures: list[float]) -> list[dict[str, float]]:
    """`grad_ratio_corr` of several students at once: logits (J, N, C) on the same N examples, each at its own T."""
    T = torch.tensor(temperatures, device=student_logits.device).view(-1, 1, 1)
    ratio = (kd_logit_grad_norm(student_logits, teacher_logits, T)
             / ce_logit_grad_norm(student_logits, labels).clamp_min(1e-12))
    confidence = true_class_prob(teacher_logits, labels, 1.0)
    return [{"grad_ratio_corr": corr, "grad_ratio_median": median}
            for corr, median in zip(spearman_rows(ratio, confidence), ratio.median(dim=1).values.tolist())]


def grad_ratio_corr(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    T: float) -> dict[str, float]:
    """Spearman correlation between each example's KD/CE logit-gradient-norm ratio and the teacher's
    true-class probability (at T = 1: its confidence), plus the ratio's median."""
    return grad_ratio_by_student(student_logits.unsqueeze(0), teacher_logits, labels, [T])[0]


@dataclass(frozen=True)
class ProbeSet:
    """The fixed training examples the gradient-rescaling probe looks at every epoch (`probe_subset`)."""

    x: torch.Tensor
    teacher_logits: torch.Tensor
    labels: torch.Tensor


def gradient_probe(student: nn.Module, probe: ProbeSet, T: float) -> Callable[[dict[str, float]], None]:
    """An on_epoch hook adding grad_ratio_corr (and grad_ratio_median) to the epoch's row, on a fixed subset.

    One forward pass of the student over the subset per epoch, in eval/inference mode.
    """

    def hook(row: dict[str, float]) -> None:
        row.update(grad_ratio_corr(predict(student, probe.x), probe.teacher_logits, probe.labels, T))

    return hook


def probe_subset(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """A fixed random subset of training indices (the same every epoch and for every loss)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(size, n)]
