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
    """What the engine calls every step: student logits, hard labels, the teacher's logits (or None)."""

    def __call__(self, student_logits: torch.Tensor, targets: torch.Tensor,
                 teacher_logits: Optional[torch.Tensor]) -> LossParts: ...


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor,
                  teacher_logits: Optional[torch.Tensor] = None) -> LossParts:
    """Hard labels alone: the teacher's and the baseline student's loss."""
    ce = F.cross_entropy(student_logits, targets)
    return LossParts(ce, ce, torch.zeros_like(ce))


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
    detached: the teacher never receives a gradient.
    """

    def __init__(self, T: float, alpha: float) -> None:
        self.T, self.alpha = T, alpha

    def __call__(self, student_logits: torch.Tensor, targets: torch.Tensor,
                 teacher_logits: torch.Tensor) -> LossParts:
        ce = F.cross_entropy(student_logits, targets)
        kd = soft_kl(student_logits, teacher_logits.detach(), self.T) * self.T**2
        return LossParts(self.alpha * kd + (1 - self.alpha) * ce, ce, kd)
