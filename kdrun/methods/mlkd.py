"""`mlkd`: multi-level logit distillation (Jin, Wang, Lin 2023, "Multi-Level Logit Distillation", CVPR).

The student's and teacher's predictions are aligned at three levels, each at the temperatures
T_j in {T, 2, 3, 5, 6} (the paper's "prediction augmentation"), p = softmax(z / T_j):

    instance:  L_ins = sum_j T_j^2 * KL(p_t || p_s)                  (batchmean)
    batch:     L_bc  = sum_j || p_t p_t^T - p_s p_s^T ||_F^2 / B       (B x B sample similarity)
    class:     L_cc  = sum_j || p_t^T p_t - p_s^T p_s ||_F^2 / K       (K x K class correlation)

and the weak-view terms are scaled by the teacher's confidence masks as the authors' code does
(github.com/Jin-Ying/Multi-Level-Logit-Distillation, KD_ours.py): L_ins and L_bc by the share of
examples whose teacher confidence max softmax(z_t) is at or below the batch median, L_cc by the
share of classes whose summed teacher probability is at or below the class median. The total,
with the authors' CIFAR weights (CE 0.1, KD 0.9, T = 4), is

    loss = ce_weight * 2 CE + kd_weight * (L_ins * (1 + m) + L_cc * m_c + L_bc * m)

The authors train on a weak and a strong (AutoAugment-style) view of each batch and add the
strong view's CE and L_ins; kdrun uses the one view the dataset gives (so the "2" and "1 +" above are the
strong view's CE and L_ins evaluated on that same view). Top-level alpha is unused.

`logit_std` z-scores the logits of L_ins alone, as the logit-standardization authors' MLKD does (Sun et al.
2024, github.com/sunshangquan/logit-standardization-KD, mdistiller/distillers/MLKD.py: `kd_loss` takes
`logit_stand`, `cc_loss` and `bc_loss` do not); L_bc, L_cc and the masks see the raw logits. The MLKD authors
have no standardization, so there is no second variant to offer. Their recipe (README, `--logit-stand
--base-temp 2 --kd-weight 9`): T=2, loss.ce_weight=0.1, loss.kd_weight=9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.methods.base import Batch, Method, MethodContext, register_method
from kdrun.methods.losses import LossParts, maybe_standardize, soft_kl
from kdrun.methods.params import MLKDParams


def instance_level(zs: torch.Tensor, zt: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 KL(softmax(z_t/T) || softmax(z_s/T)), batchmean, in log space."""
    return soft_kl(zs, zt, T) * T**2


def batch_level(ps: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
    return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / ps.shape[0]


def class_level(ps: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
    return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / ps.shape[1]


def median_masks(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of examples, and of classes, at or below the median teacher confidence (numpy's percentile 50)."""
    probs = F.softmax(teacher_logits, dim=1)
    confidence, class_confidence = probs.max(1).values, probs.sum(0)
    share = (confidence <= torch.quantile(confidence, 0.5)).to(probs.dtype).mean()  # the logits' precision
    class_share = (class_confidence <= torch.quantile(class_confidence, 0.5)).to(probs.dtype).mean()
    return share, class_share


class MLKD(Method):
    def __init__(self, temperatures: list[float], ce_weight: float, kd_weight: float, logit_std: bool) -> None:
        super().__init__()
        self.temperatures, self.ce_weight, self.kd_weight, self.logit_std = temperatures, ce_weight, kd_weight, logit_std

    def levels(self, zs: torch.Tensor, zt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_ins, L_bc, L_cc), each summed over the temperatures; `logit_std` applies to L_ins only."""
        zs_ins, zt_ins = maybe_standardize(zs, self.logit_std), maybe_standardize(zt, self.logit_std)
        ins = bc = cc = zs.new_zeros(())
        for T in self.temperatures:
            ps, pt = F.softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)
            ins, bc, cc = ins + instance_level(zs_ins, zt_ins, T), bc + batch_level(ps, pt), cc + class_level(ps, pt)
        return ins, bc, cc

    def forward(self, batch: Batch) -> LossParts:
        ce = F.cross_entropy(batch.logits, batch.labels)
        teacher = batch.teacher_logits.detach()
        share, class_share = median_masks(teacher)
        ins, bc, cc = self.levels(batch.logits, teacher)
        kd = ins * (1 + share) + cc * class_share + bc * share
        return LossParts(self.ce_weight * 2 * ce + self.kd_weight * kd, ce, kd)


@register_method("mlkd", MLKDParams)
def build(params: MLKDParams, ctx: MethodContext) -> MLKD:
    return MLKD([ctx.T, *map(float, params.temperatures)], params.ce_weight, params.kd_weight, params.logit_std)
